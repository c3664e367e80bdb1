"""Moved to `pydatacoll.store.ingest` (every Redis command lives in ``store/``); this
name stays importable for the code that still uses it."""

from pydatacoll.store.ingest import RedisIngest, encode

__all__ = ["RedisIngest", "encode"]
