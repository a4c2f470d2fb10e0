"""The fleet registry: MQTT ingest of device reports into SQL, an HTTP API, an artifact store."""
