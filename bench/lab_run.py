"""The lab cluster and Celery workers for a bench that drives real hosts.

`lab()` brings the lab up (and down again afterwards if it was not up), registers its hosts in
the bench's database and clears them of guests an interrupted run left; `Workers` starts the
panel's worker processes on this run's queue, the way scripts/demo.sh does, and waits until they
answer.
"""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from bench import database
from bench.report import REPO


def set_up(db_name: str) -> bool:
    """What every lab bench starts with: root (the lab needs it: False, said on stderr, without),
    queue, channel and cache prefixes of this run's own, and its database made and migrated."""
    if os.geteuid() != 0:
        print("this bench needs root: it uses the lab cluster", file=sys.stderr)
        return False
    prefix = f"{db_name}-{os.getpid()}"
    os.environ["CELERY_QUEUE"] = os.environ["CHANNELS_PREFIX"] = os.environ["CACHE_PREFIX"] = prefix
    database.set_up(db_name)
    return True


@contextmanager
def lab() -> Iterator[None]:
    from hosts.models import CpuServer, DiskServer
    from lab import cluster, register

    was_up = cluster.status().complete
    register.register_hosts(cluster.up())
    register.clear_guests(list(CpuServer.objects.all()), list(DiskServer.objects.all()))
    try:
        yield
    finally:
        if not was_up:
            cluster.down()


class Workers:
    """`count` worker processes (threads pool, `concurrency` each) on the default queue of this run;
    each as on a machine of its own (its own node name)."""

    def __init__(self, count: int = 1, concurrency: int = 4) -> None:
        from django.conf import settings

        queue = settings.CELERY_TASK_DEFAULT_QUEUE
        self.processes = [
            subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "xenaoe_panel", "worker", "-P", "threads",
                 "-c", str(concurrency), "-Q", f"{queue},{settings.CELERY_HA_QUEUE}",
                 "-n", f"bench{n}-{os.getpid()}@%h", "--loglevel=WARNING"],
                cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for n in range(count)
        ]
        self._wait_ready(count)

    def _wait_ready(self, count: int) -> None:
        from celery import current_app

        for _ in range(150):
            replies = current_app.control.ping(timeout=0.5) or []
            if sum(1 for reply in replies for name in reply if f"-{os.getpid()}@" in name) >= count:
                return
        self.stop()
        raise RuntimeError(f"{count} bench worker(s) did not answer within 75 s")

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        self.processes = []

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def ssh_line(target: object, argv: list[str], script: object) -> str:
    """A shell script's line running `argv` on a host over SSH, the panel's ssh options, with the
    file `script` as its standard input (how the panel sends its remote scripts)."""
    import shlex

    from drivers import ssh

    return f"{shlex.join(ssh.command(target, argv))} < {shlex.quote(str(script))}"  # type: ignore[arg-type]
