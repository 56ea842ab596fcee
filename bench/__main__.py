"""`make bench`: what operators wait for, measured on the lab cluster.

- SSH: a command on a host over a fresh connection and over the reused ControlMaster one;
- AoE: the panel's probe of one export from a CPU server (Query Config, with ATA IDENTIFY);
- a VM's creation from click (job queued) to a running guest, step by step, and its deletion;
- the channel layer: a job event from the worker side to a websocket group member.
Brings the lab up (and down again) if it is not up; runs its own worker on its own database.
"""
from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DB_NAME = "xenaoe_bench"
# A database of its own on the PostgreSQL server DATABASE_URL names (created if missing).
SERVER_URL = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres").rsplit("/", 1)[0]
os.environ["DATABASE_URL"] = f"{SERVER_URL}/{DB_NAME}"
os.environ["CELERY_QUEUE"] = os.environ["CHANNELS_PREFIX"] = f"xenaoe-bench-{os.getpid()}"
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "xenaoe_panel.settings_lab")
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))


def ensure_database() -> None:
    import psycopg

    with psycopg.connect(f"{SERVER_URL}/postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DB_NAME]).fetchone():
            conn.execute(f'CREATE DATABASE "{DB_NAME}"')


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f} ms"


def _row(what: str, samples: list[float]) -> None:
    print(f"{what:<44} median {_ms(statistics.median(samples))}   min {_ms(min(samples))}   "
          f"max {_ms(max(samples))}   n={len(samples)}")


def bench_ssh(target) -> None:
    from drivers import ssh

    fresh = []
    for _ in range(ROUNDS):
        subprocess.run(["ssh", *ssh.ssh_options(target), "-O", "exit", target.host],
                       capture_output=True, check=False)
        started = time.perf_counter()
        ssh.run(target, ["true"], timeout=10)
        fresh.append(time.perf_counter() - started)
    reused = []
    for _ in range(20):
        started = time.perf_counter()
        ssh.run(target, ["true"], timeout=10)
        reused.append(time.perf_counter() - started)
    _row(f"ssh `true` on {target.name}, fresh connection", fresh)
    _row(f"ssh `true` on {target.name}, reused connection", reused)


def bench_probe(cpu_target, interface: str, shelf: int, slot: int) -> None:
    from drivers import aoe

    samples = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        answers = aoe.probe(cpu_target, interface, shelf, slot, identify=True)
        samples.append(time.perf_counter() - started)
        assert answers, f"e{shelf}.{slot} did not answer"
    _row(f"AoE probe e{shelf}.{slot} from {cpu_target.name} (+IDENTIFY)", samples)


def bench_vm(rounds: int) -> tuple[int, int]:
    from jobs.follow import follow
    from vms.services import VmRequest, create_vm, delete_vm

    created, deleted, steps = [], [], {}
    for i in range(rounds):
        started = time.perf_counter()
        job = create_vm(VmRequest(name=f"bench{i}", vcpus=1, memory_mib=64, disk_mib=32, image="none"))
        job = follow(job.pk, lambda _line: None)
        assert job.state == "succeeded", job.message
        created.append(time.perf_counter() - started)
        entries = list(job.log.filter(message__startswith="Step ").order_by("serial"))
        ends = [e.time for e in entries[1:]] + [job.finished_at]
        for entry, end in zip(entries, ends, strict=True):
            steps.setdefault(entry.message.split(": ", 1)[1], []).append((end - entry.time).total_seconds())
        started = time.perf_counter()
        job = follow(delete_vm(f"bench{i}").pk, lambda _line: None)
        assert job.state == "succeeded", job.message
        deleted.append(time.perf_counter() - started)
    _row("VM create: queued -> running guest", created)
    for title, samples in steps.items():
        _row(f"  {title[:40]}", samples)
    _row("VM delete: queued -> everything removed", deleted)
    return len(created), len(deleted)


def bench_channel_layer() -> None:
    from channels.layers import get_channel_layer

    async def run() -> list[float]:
        layer = get_channel_layer()
        channel = await layer.new_channel()
        await layer.group_add("bench", channel)
        samples = []
        for _ in range(50):
            started = time.perf_counter()
            await layer.group_send("bench", {"type": "job.event", "n": 1})
            await layer.receive(channel)
            samples.append(time.perf_counter() - started)
        await layer.group_discard("bench", channel)
        return samples

    _row("channel layer group_send -> receive", asyncio.run(run()))


def main() -> int:
    if os.geteuid() != 0:
        print("make bench needs root: it uses the lab cluster", file=sys.stderr)
        return 2
    ensure_database()
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from hosts.models import CpuServer, DiskServer
    from hosts.targets import ssh_target
    from jobs.services import WorkerUnavailable, check_workers
    from lab import cluster, register
    from vms.models import VirtualMachine

    was_up = cluster.status().complete
    status = cluster.up()
    register.register_hosts(status)
    VirtualMachine.objects.filter(name__startswith="bench").delete()
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "xenaoe_panel", "worker", "-P", "threads", "-c", "4",
         "-Q", os.environ["CELERY_QUEUE"], "-n", f"bench-{os.getpid()}@%h", "--loglevel=WARNING"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                check_workers(timeout=0.5)
                break
            except WorkerUnavailable:
                continue
        print(f"XenAoE Panel benchmarks ({ROUNDS} rounds; BENCH_ROUNDS to change)\n")
        disk1 = DiskServer.objects.get(name="disk1")
        cpu1 = CpuServer.objects.get(name="cpu1")
        bench_ssh(ssh_target(disk1))
        bench_channel_layer()
        from drivers import vblade

        path = f"{disk1.volume_dir}/bench-probe.img"
        target = ssh_target(disk1)
        vblade.stop_export(target, disk1.aoe_shelf, 254)  # an interrupted run's, persisted on the host
        vblade.remove_volume(target, path)
        vblade.create_volume(target, path, 16)
        vblade.start_export(target, vblade.ExportSpec(disk1.aoe_shelf, 254, disk1.san_interface, path))
        try:
            bench_probe(ssh_target(cpu1), cpu1.san_interface, disk1.aoe_shelf, 254)
        finally:
            vblade.stop_export(target, disk1.aoe_shelf, 254)
            vblade.remove_volume(target, path)
        bench_vm(ROUNDS)
    finally:
        worker.terminate()
        worker.wait(timeout=15)
        if not was_up:
            cluster.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
