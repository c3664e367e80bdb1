"""Where Redis is: a plain server (``redis://``, ``rediss://``, ``unix://``) or a master
found through Redis Sentinel (``sentinel://H1:P1,H2:P2/MASTERNAME?db=0``).

`parse_redis_url` turns the ``[redis] url`` option (or ``--redis``) into a frozen
`RedisAddress`; `pydatacoll.config` re-exports both. Pure: no I/O.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs, unquote, urlsplit

import attrs


@attrs.frozen
class RedisAddress:
    """Where Redis is: a TCP host and port, a unix socket path, or the Sentinels that
    know the master (``sentinels`` and ``master_name``); plus db and password."""

    host: str | None = None
    port: int | None = None
    path: str | None = None
    db: int = 0
    password: str | None = attrs.field(default=None, repr=False)
    sentinels: tuple[tuple[str, int], ...] = ()
    master_name: str | None = None

    def describe(self) -> str:
        """A printable form without the password."""
        if self.path is not None:
            return f"unix://{self.path}?db={self.db}"
        if self.sentinels:
            hosts = ",".join(f"{host}:{port}" for host, port in self.sentinels)
            return f"sentinel://{hosts}/{self.master_name}?db={self.db}"
        return f"redis://{self.host}:{self.port}/{self.db}"


def parse_redis_url(url: str) -> RedisAddress:
    """Parse ``redis://[:password@]host:port/db``, ``unix:///path.sock?db=N`` or
    ``sentinel://[:password@]h1:p1,h2:p2,.../MASTERNAME?db=N``."""
    if url.strip().lower().startswith("sentinel://"):
        return _parse_sentinel_url(url.strip())
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    password = unquote(parts.password) if parts.password else None
    if "password" in query:
        password = query["password"][0]
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError("a unix URL needs a socket path: unix:///path/to/redis.sock?db=0")
        db = _parse_db(query.get("db", ["0"])[0])
        return RedisAddress(path=parts.path, db=db, password=password)
    if parts.scheme != "redis":
        raise ValueError(
            "use redis://[:password@]host:port/db, unix:///path.sock?db=N "
            "or sentinel://host:port,host:port,.../MASTERNAME?db=N"
        )
    host = parts.hostname or "127.0.0.1"
    try:
        port = parts.port or 6379
    except ValueError:
        raise ValueError("the port must be a number from 1 to 65535") from None
    db = _parse_db(parts.path.lstrip("/") or "0")
    return RedisAddress(host=host, port=port, db=db, password=password)


_MASTER_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


def _parse_sentinel_url(url: str) -> RedisAddress:
    # urlsplit cannot take several host:port pairs in one netloc: split it by hand.
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    password = unquote(userinfo.partition(":")[2]) if userinfo.partition(":")[2] else None
    if "password" in query:
        password = query["password"][0]
    sentinels = []
    for pair in hosts.split(","):
        host, _, port_text = pair.strip().rpartition(":")
        host = host.strip("[]")
        if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(
                f"a Sentinel is host:port with a port from 1 to 65535, not {pair.strip()!r}"
            )
        sentinels.append((host, int(port_text)))
    name = unquote(parts.path.strip("/"))
    if not _MASTER_NAME_RE.match(name):
        raise ValueError("a sentinel URL names its master: sentinel://h1:p1,h2:p2/MASTERNAME")
    db = _parse_db(query.get("db", ["0"])[0])
    return RedisAddress(db=db, password=password, sentinels=tuple(sentinels), master_name=name)


def _parse_db(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise ValueError(f"the database number must be a non-negative integer, not {text!r}")
    return int(text)
