"""Redis access: the key schema, the configuration store and the embedded redis-server."""
