"""Redis through Sentinel: the broker (Celery/kombu), the channel layer (channels_redis) and the cache
(Django's RedisCache) find the current Redis primary by asking the sentinels, so that a Redis
failover (Sentinel promoting a replica) does not stop the panel. Used by settings.py when
XENAOE_REDIS_SENTINELS is set (docs/ha.md, "Running the panel on two machines").

Each library has its own way: kombu takes `sentinel://` URLs and the master's name as a transport
option; channels_redis a host dict with "sentinels" and "master_name"; Django's cache a pool class
(`OPTIONS["pool_class"]`, Django's documented hook) whose `from_url` builds redis-py's Sentinel pool.
"""
from __future__ import annotations

import re
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from redis.sentinel import Sentinel, SentinelConnectionPool

Address = tuple[str, int]
_SENTINEL = re.compile(r"\[(?P<v6>[0-9A-Fa-f:.]+)\](?::(?P<v6port>[0-9]{1,5}))?"
                       r"|(?P<host>[^:\[\]\s]+)(?::(?P<port>[0-9]{1,5}))?")


def parse_sentinels(items: list[str], name: str = "XENAOE_REDIS_SENTINELS") -> list[Address]:
    """["10.0.0.5:26379", "[fd00::5]:26379", "redis3"] -> addresses (port 26379 when none is given)."""
    addresses = []
    for item in items:
        match = _SENTINEL.fullmatch(item)
        port = int(match["v6port"] or match["port"] or 26379) if match else 0
        if match is None or not 0 < port < 65536:
            raise ImproperlyConfigured(f"{name}: {item!r} is not host:port")
        addresses.append((match["v6"] or match["host"], port))
    if not addresses:
        raise ImproperlyConfigured(f"{name} names no sentinel")
    return addresses


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def celery_broker(sentinels: list[Address], master: str) -> tuple[str, dict[str, Any]]:
    """kombu's broker URL (every sentinel, ';'-separated) and transport options."""
    url = ";".join(f"sentinel://{_url_host(host)}:{port}/0" for host, port in sentinels)
    return url, {"master_name": master}


def channel_layer_hosts(sentinels: list[Address], master: str) -> list[dict[str, Any]]:
    return [{"sentinels": list(sentinels), "master_name": master}]


def cache(sentinels: list[Address], master: str, prefix: str) -> dict[str, Any]:
    return {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": f"sentinel:{master}",  # not a URL: SentinelPool.from_url ignores it
        "KEY_PREFIX": prefix,
        "OPTIONS": {"pool_class": f"{__name__}.SentinelPool", "service_name": master,
                    "sentinels": list(sentinels)},
    }


class SentinelPool(SentinelConnectionPool):
    """A connection pool to the master the sentinels name, for Django's RedisCache."""

    @classmethod
    def from_url(cls, url: str, *, service_name: str, sentinels: list[Address], **options: Any) -> SentinelPool:
        return cls(service_name, Sentinel(sentinels), **options)
