"""`python -m bench.progress`: a job's progress from the worker to 200 open job pages.

A job log entry written as the worker writes it (`jobs.runner.append_log`: the row, then the event on
commit, through the Redis channel layer) is timed to its arrival at each of 200 websocket clients
connected to Daphne (`ws/jobs/<id>/`, API token), as 200 browsers following a job would be. The
baseline, in the same rounds: a bare `group_send` to a group of 200 channels on the same Redis and
each channel's `receive`, with no database, no Daphne and no websocket. Its own database, channel
prefix and Daphne. BENCH_CLIENTS and BENCH_ROUNDS change the sizes.
"""
from __future__ import annotations

import asyncio
import json
import os
import select
import subprocess
import sys
import threading
import time

from bench import database, report

DB_NAME = "xenaoe_bench_progress"
CLIENTS = int(os.environ.get("BENCH_CLIENTS", "200"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "20"))
SECTION = f"Progress to {CLIENTS} open job pages"


def _wait_all(sockets: list, serial: int, started: float, timeout: float = 30) -> list[float]:
    """Seconds from `started` until each socket received the entry numbered `serial`."""
    arrived: dict[int, float] = {}
    deadline = time.monotonic() + timeout
    while len(arrived) < len(sockets):
        pending = [i for i in range(len(sockets)) if i not in arrived]
        readable = {s.fileno() for s in select.select([sockets[i].sock for i in pending], [], [], 0.5)[0]}
        for i in pending:
            ws = sockets[i]
            fresh = ws.sock.fileno() in readable
            if not fresh and len(ws.buffer) < 2:
                continue
            while (frame := ws.receive(0.05 if fresh else 0)) is not None:
                entry = json.loads(frame[1]).get("entry") or {}
                if entry.get("serial") == serial:
                    arrived[i] = time.perf_counter() - started
                    break
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(sockets) - len(arrived)} clients did not get entry {serial} in {timeout} s")
    return [arrived[i] for i in range(len(sockets))]


class BareGroupSend:
    """A group of CLIENTS channels on the channel layer, on an event loop of its own (a thread), so
    that its rounds interleave with the panel's."""

    def __init__(self) -> None:
        from channels.layers import get_channel_layer

        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.layer = get_channel_layer()
        self.channels = self._run(self._join())

    def _run(self, coroutine):  # noqa: ANN001, ANN202 - a coroutine in, its result out
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(60)

    async def _join(self) -> list[str]:
        channels = [await self.layer.new_channel() for _ in range(CLIENTS)]
        for channel in channels:
            await self.layer.group_add("bench.progress", channel)
        return channels

    async def _round(self) -> list[float]:
        started = time.perf_counter()
        await self.layer.group_send("bench.progress", {"type": "job.event", "n": 1})
        latencies = []
        for channel in self.channels:
            await self.layer.receive(channel)
            latencies.append(time.perf_counter() - started)
        return latencies

    def round(self) -> list[float]:
        return self._run(self._round())

    def close(self) -> None:
        async def leave() -> None:
            for channel in self.channels:
                await self.layer.group_discard("bench.progress", channel)

        self._run(leave())
        self.loop.call_soon_threadsafe(self.loop.stop)


def main() -> int:
    os.environ["CHANNELS_PREFIX"] = f"xenaoe-bench-progress-{os.getpid()}"
    database.set_up(DB_NAME)
    from django.contrib.auth import get_user_model

    from api.tokens import issue_token
    from bench.websocket import WebSocket
    from jobs.choices import JobState
    from jobs.models import Job
    from jobs.runner import append_log

    user = get_user_model().objects.create_user("bench-operator", is_staff=True)
    token = issue_token(user)
    job = Job.objects.create(kind="bench.progress", state=JobState.RUNNING, target_name="bench")
    port = 19000 + os.getpid() % 1000
    web = subprocess.Popen([sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
                            "xenaoe_panel.asgi:application"], cwd=report.REPO, env=dict(os.environ),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sockets = []
    try:
        headers = {"Authorization": f"Token {token}", "Origin": f"http://127.0.0.1:{port}"}
        for _ in range(100):
            try:
                sockets.append(WebSocket("127.0.0.1", port, f"/ws/jobs/{job.pk}/", headers))
                break
            except OSError:
                time.sleep(0.2)
        while len(sockets) < CLIENTS:
            sockets.append(WebSocket("127.0.0.1", port, f"/ws/jobs/{job.pk}/", headers))
        append_log(job, "warming up")
        _wait_all(sockets, 1, time.perf_counter())
        bare = BareGroupSend()
        bare.round()
        through, floor = [], []
        p50, p95, floor50, floor95 = [], [], [], []
        for n in range(ROUNDS):
            baseline = bare.round()
            started = time.perf_counter()
            entry = append_log(job, f"step {n}")
            latencies = _wait_all(sockets, entry.serial, started)
            through += latencies
            floor += baseline
            p50.append(report.percentile(latencies, 50))
            p95.append(report.percentile(latencies, 95))
            floor50.append(report.percentile(baseline, 50))
            floor95.append(report.percentile(baseline, 95))
        report.save("progress", [
            report.Figure(SECTION, "job log entry -> client, p50 of the clients", "bare group_send p50",
                          p50, floor50, notes={"clients": CLIENTS}),
            report.Figure(SECTION, "job log entry -> client, p95 of the clients", "bare group_send p95",
                          p95, floor95, notes={"clients": CLIENTS}),
        ])
        print(f"\nall arrivals: p50 {report.percentile(through, 50) * 1000:.1f} ms, "
              f"p95 {report.percentile(through, 95) * 1000:.1f} ms; bare group_send p50 "
              f"{report.percentile(floor, 50) * 1000:.1f} ms, p95 {report.percentile(floor, 95) * 1000:.1f} ms")
        bare.close()
    finally:
        for ws in sockets:
            ws.close()
        web.terminate()
        web.wait(timeout=15)
        database.drop(DB_NAME)
    return 0


if __name__ == "__main__":
    sys.exit(main())
