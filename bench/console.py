"""`make bench` (part): keystroke echo latency on a guest's serial console, through the panel against
`virsh console` directly.

A Debian guest from the default image is created on the lab (the image built or taken from the
cache, registered, copied); the bench logs in on ttyS0 and then types one character at a time at
the shell prompt, timing each until the guest's echo comes back:
- through the panel: a websocket to Daphne (`ws/vms/NAME/console/serial/`, API token), which reads
  and writes libvirt's console stream over qemu+ssh (the path a browser takes, minus the browser);
- directly: `virsh -c URI console DOMAIN` on a pseudo-terminal, over the same URI.
Brings the lab up (and down again) if it is not up; its own database, worker and Daphne.
"""
from __future__ import annotations

import os
import pty
import re
import secrets
import select
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench import database, lab_run
from bench.report import REPO
from bench.websocket import WebSocket

DB_NAME = "xenaoe_bench_console"
VM = "benchcon"
PASSWORD = secrets.token_urlsafe(12)  # the guest's, for this run only
KEYS = int(os.environ.get("BENCH_CONSOLE_KEYS", "100"))


class Terminal:
    """read()/write() over either path, with the output kept for expectations."""

    def __init__(self, write: Callable[[bytes], None], read_some: Callable[[float], bytes]) -> None:
        self.write, self.read_some = write, read_some
        self.seen = bytearray()

    def expect(self, pattern: bytes, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.seen):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{pattern!r} not seen; last output {bytes(self.seen[-300:])!r}")
            self.seen += self.read_some(0.5)

    def log_in(self) -> None:
        for _ in range(60):
            self.write(b"\r")
            try:
                self.expect(rb"(login: |\$ )$", 3)
                break
            except RuntimeError:
                continue
        if self.seen.endswith(b"login: "):
            self.write(b"debian\r")
            self.expect(rb"Password: $", 30)
            self.write(PASSWORD.encode() + b"\r")
            self.expect(rb"\$ $", 60)

    def echo_latencies(self, count: int) -> list[float]:
        samples = []
        for i in range(count):
            key = b"abcdefghij"[i % 10:i % 10 + 1]
            self.seen.clear()
            started = time.perf_counter()
            self.write(key)
            while key not in self.seen:
                chunk = self.read_some(5)
                if not chunk:
                    raise RuntimeError(f"no echo of {key!r} within 5 s")
                self.seen += chunk
            samples.append(time.perf_counter() - started)
            if i % 10 == 9:
                self.write(b"\x15")  # Ctrl-U: the line stays short
                time.sleep(0.05)
                self.read_some(0.1)
        return samples


def _panel_terminal(url: str, token: str) -> tuple[Terminal, WebSocket]:
    host, port = url.removeprefix("http://").split(":")
    ws = WebSocket(host, int(port), f"/ws/vms/{VM}/console/serial/",
                   {"Origin": url, "Authorization": f"Token {token}"})

    def read_some(timeout: float) -> bytes:
        data = b""
        frame = ws.receive(timeout)
        while frame is not None:
            if frame[0] == 2:
                data += frame[1]
            frame = ws.receive(0)
        return data

    return Terminal(ws.send, read_some), ws


def _virsh_terminal(uri: str, domain: str) -> tuple[Terminal, subprocess.Popen, int]:
    main, child = pty.openpty()
    proc = subprocess.Popen(["virsh", "-c", uri, "console", domain], stdin=child, stdout=child, stderr=child)
    os.close(child)

    def read_some(timeout: float) -> bytes:
        data = b""
        while select.select([main], [], [], timeout)[0]:
            try:
                data += os.read(main, 65536)
            except OSError:
                break
            timeout = 0
        return data

    return Terminal(lambda data: os.write(main, data), read_some), proc, main


def _percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p95 = ordered[max(0, int(round(0.95 * len(ordered))) - 1)]
    return (f"p50 {statistics.median(ordered) * 1000:7.1f} ms   p95 {p95 * 1000:7.1f} ms   "
            f"max {ordered[-1] * 1000:7.1f} ms   n={len(ordered)}")


def main() -> int:
    if os.geteuid() != 0:
        print("the console bench needs root: it uses the lab cluster", file=sys.stderr)
        return 2
    # A database of its own, made afresh: an image another run registered would name copies and a
    # store this clone's lab does not have.
    if not lab_run.set_up(DB_NAME):
        return 2
    from django.conf import settings
    from django.contrib.auth import get_user_model

    from api.tokens import issue_token
    from images import build
    from images.services import register_built
    from jobs.follow import follow
    from jobs.services import WorkerUnavailable, check_workers
    from lab import cluster, register
    from vms.models import VirtualMachine
    from vms.services import VmRequest, create_vm, delete_vm

    def succeeded(job) -> None:
        job = follow(job.pk, lambda _line: None)
        if job.state != "succeeded":
            raise RuntimeError(f"job {job.kind}: {job.message}")

    was_up = cluster.status().complete
    status = cluster.up()
    register.register_hosts(status)
    env = dict(os.environ)
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "xenaoe_panel", "worker", "-P", "threads", "-c", "4",
         "-Q", os.environ["CELERY_QUEUE"], "-n", f"bench-console-{os.getpid()}@%h", "--loglevel=WARNING"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port = 18000 + os.getpid() % 1000
    web = subprocess.Popen([sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
                            "xenaoe_panel.asgi:application"], cwd=REPO, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    created = False
    try:
        for _ in range(100):
            try:
                check_workers(timeout=0.5)
                break
            except WorkerUnavailable:
                continue
        recipe = build.RECIPES["debian-12"]
        built = build.build(recipe, Path(settings.IMAGE_BUILD_CACHE), lambda _p, _m: None)
        register.register_guest_network()
        from images.models import Image

        if not Image.objects.filter(name="debian-12").exists():
            succeeded(register_built(recipe, built, name="debian-12", source="bench", make_default=True))
        VirtualMachine.objects.filter(name=VM).delete()
        succeeded(create_vm(VmRequest(name=VM, vcpus=2, memory_mib=512, disk_mib=1024, cpu_server="cpu1",
                                      allow_n_plus_one_break=True, password=PASSWORD)))
        created = True
        vm = VirtualMachine.objects.select_related("cpu_server").get(name=VM)
        user = get_user_model().objects.filter(username="bench").first() or \
            get_user_model().objects.create_user("bench", is_staff=True)
        token = issue_token(user)

        print(f"\nSerial console keystroke echo ({KEYS} keys; BENCH_CONSOLE_KEYS to change), guest on "
              f"{vm.cpu_server.name} under TCG")
        terminal, ws = _panel_terminal(f"http://127.0.0.1:{port}", token)
        try:
            terminal.log_in()
            through_panel = terminal.echo_latencies(KEYS)
        finally:
            ws.close()
        time.sleep(1)  # the panel lets go of the console
        terminal, proc, fd = _virsh_terminal(vm.cpu_server.libvirt_uri, vm.domain_name)
        try:
            terminal.expect(rb"Escape character", 20)
            terminal.log_in()
            direct = terminal.echo_latencies(KEYS)
        finally:
            os.write(fd, b"\x1d")
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
            os.close(fd)
        print(f"{'through the panel (websocket -> Daphne -> libvirt)':<52} {_percentiles(through_panel)}")
        print(f"{'virsh console (libvirt directly)':<52} {_percentiles(direct)}")
    finally:
        if created:
            try:
                succeeded(delete_vm(VM))
            except Exception as exc:  # noqa: BLE001 - reported, the rest still cleaned up
                print(f"deleting {VM} failed: {exc}", file=sys.stderr)
        web.terminate()
        worker.terminate()
        for proc in (web, worker):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        if not was_up:
            cluster.down()
        database.drop(DB_NAME)
    return 0


if __name__ == "__main__":
    sys.exit(main())
