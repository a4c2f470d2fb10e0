"""The ``edgekit`` command line (click). Subcommand modules import heavy libraries lazily."""
