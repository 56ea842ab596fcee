"""Redis behind Sentinel (xenaoe_panel/redis_ha.py): the settings it builds for the broker, the channel
layer and the cache, used for real against a Redis primary, a replica and a sentinel this test starts
on free local ports (not the Redis the other tests share) — before and after Sentinel fails over."""
from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from channels_redis.core import RedisChannelLayer
from django.core.cache.backends.redis import RedisCache
from django.core.exceptions import ImproperlyConfigured
from kombu import Connection

from xenaoe_panel import redis_ha

MASTER = "xenaoe-test"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except redis.RedisError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout:g} s")


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[list[redis_ha.Address]]:
    """A primary, its replica and one sentinel watching them (quorum 1), all started here."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    primary, replica, sentinel_port = _free_port(), _free_port(), _free_port()
    base = ["redis-server", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)]
    conf = tmp_path / "sentinel.conf"
    # Sentinel must never fail over by itself (a loaded machine answers its pings late): the test
    # fails over on purpose, and a failover of its own between a put and a get loses the message.
    conf.write_text(f"port {sentinel_port}\nbind 127.0.0.1\ndir {tmp_path}\n"
                    f"sentinel monitor {MASTER} 127.0.0.1 {primary} 1\n"
                    f"sentinel down-after-milliseconds {MASTER} 60000\nsentinel failover-timeout {MASTER} 10000\n")
    processes = [
        subprocess.Popen([*base, "--port", str(primary)], stdout=subprocess.DEVNULL),
        subprocess.Popen([*base, "--port", str(replica), "--replicaof", "127.0.0.1", str(primary)],
                         stdout=subprocess.DEVNULL),
        subprocess.Popen(["redis-server", str(conf), "--sentinel"], stdout=subprocess.DEVNULL),
    ]
    try:
        watcher = redis.Redis(port=sentinel_port)
        _wait(lambda: int(watcher.sentinel_master(MASTER)["num-slaves"]) == 1, 20, "the sentinel sees the replica")
        _wait(lambda: redis.Redis(port=replica).info("replication")["master_link_status"] == "up", 20,
              "the replica in sync")
        # Sentinel promotes only a replica it has itself connected to and read INFO from (else
        # NOGOODSLAVE); seeing it listed in the primary's INFO comes earlier than that.
        _wait(lambda: _promotable(watcher), 30, "the sentinel has the replica's INFO")
        yield [("127.0.0.1", sentinel_port)]
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=10)


def _promotable(watcher: redis.Redis) -> bool:
    replicas = watcher.sentinel_slaves(MASTER)
    return bool(replicas) and all(
        "disconnected" not in r["flags"] and "s_down" not in r["flags"] and r["master-link-status"] == "ok"
        and 0 < int(r["info-refresh"]) < 10_000
        for r in replicas)


def _primary_port(sentinels: list[redis_ha.Address]) -> int:
    return int(redis.Redis(host=sentinels[0][0], port=sentinels[0][1]).sentinel_get_master_addr_by_name(MASTER)[1])


def _round_trips(sentinels: list[redis_ha.Address]) -> None:
    """The cache, the channel layer and the broker, each through the sentinel."""
    settings = redis_ha.cache(sentinels, MASTER, "xenaoe-test")
    cache = RedisCache(settings["LOCATION"], settings)
    key = f"probe-{uuid.uuid4().hex}"
    cache.set(key, {"n": 1}, 30)
    assert cache.get(key) == {"n": 1}

    async def layer_round_trip() -> dict:
        layer = RedisChannelLayer(hosts=redis_ha.channel_layer_hosts(sentinels, MASTER), prefix="xenaoe-test")
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "probe", "key": key})
        try:
            return await asyncio.wait_for(layer.receive(channel), 5)
        finally:
            await layer.flush()
            await layer.close_pools()

    assert asyncio.run(layer_round_trip()) == {"type": "probe", "key": key}

    url, options = redis_ha.celery_broker(sentinels, MASTER)
    with Connection(url, transport_options=options, connect_timeout=5) as connection:
        queue = connection.SimpleQueue(f"xenaoe-test-{key}")
        queue.put({"key": key})
        message = queue.get(timeout=5)
        assert message.payload == {"key": key}
        message.ack()
        queue.clear()
        queue.close()


def test_broker_channel_layer_and_cache_follow_the_primary_the_sentinels_name(sentinel):
    _round_trips(sentinel)
    before = _primary_port(sentinel)
    redis.Redis(host=sentinel[0][0], port=sentinel[0][1]).execute_command("SENTINEL", "FAILOVER", MASTER)
    _wait(lambda: _primary_port(sentinel) != before, 30, "Sentinel promotes the replica")
    _wait(lambda: redis.Redis(port=_primary_port(sentinel)).info("replication")["role"] == "master", 30,
          "the promoted replica takes writes")
    _round_trips(sentinel)  # fresh clients, as the panel's processes get on their next connection


@pytest.mark.parametrize(("items", "expected"), [
    (["10.0.0.5:26379", "redis2", "[fd00::5]:26380"], [("10.0.0.5", 26379), ("redis2", 26379), ("fd00::5", 26380)]),
])
def test_sentinel_addresses_parse(items, expected):
    assert redis_ha.parse_sentinels(items) == expected
    url, options = redis_ha.celery_broker(expected, "xenaoe")
    assert url == "sentinel://10.0.0.5:26379/0;sentinel://redis2:26379/0;sentinel://[fd00::5]:26380/0"
    assert options == {"master_name": "xenaoe"}


@pytest.mark.parametrize("items", [[], ["host:port"], ["a:99999"], ["a b:1"], ["fd00::5"]])
def test_bad_sentinel_addresses_fail_fast(items):
    with pytest.raises(ImproperlyConfigured):
        redis_ha.parse_sentinels(items)
