"""Redis URLs, Redis Sentinel's included: the one place that turns a URL into a client.

Besides redis-py's ``redis://``, ``rediss://`` and ``unix://``, a URL may name a primary
that Redis Sentinel watches::

    redis+sentinel://[user:password@]host1:26379,host2:26379,host3:26379/<service>[/<db>]

(``rediss+sentinel://`` for TLS, to the sentinels and to the primary). The hosts are
sentinels (port 26379 unless given), ``<service>`` is the name they monitor the primary
under (``sentinel monitor <service> ...``), ``<db>`` the database (0 unless given). The
user, the password and the query options (``?ssl_cert_reqs=none``, ...) are the
primary's, read by redis-py exactly as for ``redis://``; the sentinels' own password,
when they have one, is passed apart (``sentinel_password``).

The client is redis-py's ``Sentinel(...).master_for(service)``: it asks the sentinels
where the primary is before each new connection, and drops its connections when the
primary it knew is demoted (``READONLY``, or a blocked read ``UNBLOCKED`` by the
failover). A failover is then, for its caller, a connection error: an outage that ends
when the sentinels have promoted a replica.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

__all__ = [
    "DEFAULT_SENTINEL_PORT",
    "SENTINEL_SCHEMES",
    "SentinelURL",
    "client_from_url",
    "describe_error",
    "is_sentinel_url",
    "parse_sentinel_url",
    "sentinel_client",
]

SENTINEL_SCHEMES: Final = ("redis+sentinel", "rediss+sentinel")
DEFAULT_SENTINEL_PORT: Final = 26379
SHAPE: Final = "redis+sentinel://[user:password@]host:26379[,host:26379...]/<service>[/<db>]"


@dataclass(frozen=True)
class SentinelURL:
    """What a ``redis+sentinel://`` URL says."""

    sentinels: tuple[tuple[str, int], ...]  # (host, port) of each sentinel, in URL order
    service: str  # the name the sentinels monitor the primary under
    tls: bool  # rediss+sentinel://: TLS to the sentinels and to the primary
    # The primary's connection options from the URL (db, username, password, query options).
    options: Mapping[str, Any] = field(repr=False)


def is_sentinel_url(url: str) -> bool:
    """True for a ``redis+sentinel://`` or ``rediss+sentinel://`` URL (any case)."""
    return url.lower().startswith(tuple(f"{scheme}://" for scheme in SENTINEL_SCHEMES))


def parse_sentinel_url(url: str) -> SentinelURL:
    """Read a Sentinel URL; ``ValueError`` says what is wrong (never quoting the password)."""
    if not is_sentinel_url(url):
        raise ValueError(f"not a Sentinel URL: expected {SHAPE}")
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if not hosts:
        raise ValueError(f"no sentinel address: expected {SHAPE}")
    sentinels = tuple(_sentinel_address(item) for item in hosts.split(","))
    path = parts.path.split("/")[1:]  # "/<service>/<db>" -> ["<service>", "<db>"]
    service = unquote(path[0]) if path else ""
    if not service:
        raise ValueError(f"no service name after the sentinel addresses: expected {SHAPE}")
    db = path[1] if len(path) > 1 and path[1] else "0"
    if len(path) > 2 or not db.isdigit():
        raise ValueError(
            f"bad database {'/'.join(path[1:])!r} after the service name: expected {SHAPE}"
        )
    tls = parts.scheme.lower() == "rediss+sentinel"
    # The rest is what a redis:// URL would say: let redis-py read it the same way.
    query = f"?{parts.query}" if parts.query else ""
    options = redis.connection.parse_url(  # type: ignore[no-untyped-call]
        f"{'rediss' if tls else 'redis'}://{userinfo}{at}sentinel-primary/{db}{query}"
    )
    for placeholder in ("host", "port", "connection_class"):
        options.pop(placeholder, None)
    return SentinelURL(sentinels, service, tls, options)


def _sentinel_address(text: str) -> tuple[str, int]:
    """``host:port``, ``host`` (port 26379) or ``[::1]:26379`` -> (host, port)."""
    try:
        address = urlsplit(f"//{text}")
        host, port = address.hostname, address.port
    except ValueError:
        raise ValueError(f"bad sentinel address {text!r}: expected host:port") from None
    if not host:
        raise ValueError(f"empty sentinel address {text!r} in the list: expected {SHAPE}")
    return host, DEFAULT_SENTINEL_PORT if port is None else port


def sentinel_client(
    url: str, *, sentinel_password: str | None = None, **options: Any
) -> redis.Redis:
    """A client of the primary of a ``redis+sentinel://`` URL (redis-py's ``master_for``).

    ``options`` are the primary's connection options (timeouts, retry, client name; the
    URL's own options win, as with ``redis.Redis.from_url``). The sentinels are asked with
    the same socket timeouts, no retries (the next sentinel is the retry), TLS for
    ``rediss+sentinel://``, and ``sentinel_password`` when they require one. Nothing
    connects before the first command. ``ValueError`` for a URL that cannot work.
    """
    address = parse_sentinel_url(url)
    asking: dict[str, Any] = {
        key: value for key, value in options.items() if key.startswith("socket_")
    }
    asking["retry"] = Retry(NoBackoff(), 0)  # as recent redis-py does; older ones retried
    if sentinel_password:
        asking["password"] = sentinel_password
    primary = {**options, **address.options}
    if address.tls:
        primary["ssl"] = True
        asking["ssl"] = True
        asking.update({key: value for key, value in primary.items() if key.startswith("ssl_")})
    sentinel = Sentinel(address.sentinels, sentinel_kwargs=asking)
    client: redis.Redis = sentinel.master_for(address.service, **primary)
    return client


def client_from_url(
    url: str, *, sentinel_password: str | None = None, **options: Any
) -> redis.Redis:
    """A client for any Redis URL: :func:`sentinel_client` for a Sentinel URL, else
    ``redis.Redis.from_url``. ``ValueError`` for a URL that cannot work."""
    if is_sentinel_url(url):
        return sentinel_client(url, sentinel_password=sentinel_password, **options)
    return redis.Redis.from_url(url, **options)


# Where redis-py appends the repr of a client or pool to a message (a Sentinel's "No master
# found for 'svc' : <redis.client.Redis(<redis.connection.ConnectionPool(...)>)>", about
# 1,300 characters of connection settings): nothing an operator needs, cut.
_OBJECT_REPR: Final = " : <redis."


def describe_error(error: BaseException) -> str:
    """One line for logs and messages: the exception's type and its message, on one line,
    without the repr of a redis-py object some messages end with."""
    message = " ".join(str(error).split())
    message = message.split(_OBJECT_REPR, 1)[0]
    return f"{type(error).__name__}: {message}" if message else type(error).__name__
