"""Public test helpers: a private redis-server, fixtures."""
