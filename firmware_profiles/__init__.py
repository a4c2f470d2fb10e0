"""Hardware profiles (data): one TOML file per device class, schema in edgekit.core.profiles."""
