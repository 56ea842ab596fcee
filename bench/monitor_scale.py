"""`python -m bench.monitor_scale`: the host monitor over 200 CPU servers and 20 disk servers
(issue 12, item 6). Needs root.

A fleet of light hosts (lab/fleet.py: a namespace each, only sshd; CPU hosts reach one shared
libvirtd through their own sshd) registered in a throw-away database, and the monitor's own code
(`ha.monitor.Monitor`: its `cycle`, and its `run` loop) run against it:

(a) one cycle over the 220 hosts, against one SSH round trip to one fleet host (`ssh.run` of `true`
    through its ControlMaster: what one command on one host costs the panel), interleaved; cycles
    paced as `manage.py monitor` paces them (the rest of the interval slept, untimed). Target: a p95
    under MONITOR_INTERVAL_S; the checks of live hosts that missed are counted (they must not).
(b) a host killed (its links' own ends down, every process SIGKILLed: silence, not refusal) among
    220 against the same among 2 (one CPU and one disk host), interleaved, the kill at the same
    moment of the monitor's cycle in both: the time until the monitor declares it dead (and until
    its first missed check). The ratio should be ~1.

What the fleet does not model: guests, exports and the SAN (the monitor's AoE probe of each CPU
server is answered at once with "nothing expected, nothing seen", as on a CPU server with no
exports to see; BENCH_MONITOR_SAN=1 runs the real probe on the fleet's empty SAN instead, at the
price of a Python process per probe on the same two cores as everything else), BMCs (none
registered: the monitor reads no sensors). Failovers queued by a declared death go to an in-memory
broker: no worker anywhere takes them. BENCH_ROUNDS / BENCH_KILL_ROUNDS change the rounds.
"""
from __future__ import annotations

import os
import random
import resource
import sys
import threading
import time

from bench import database, report

DB_NAME = "xenaoe_bench_monitor"
CPUS, DISKS = 200, 20
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "20"))
KILL_ROUNDS = int(os.environ.get("BENCH_KILL_ROUNDS", "5"))
REAL_SAN = os.environ.get("BENCH_MONITOR_SAN") == "1"
SECTION = f"Monitor at scale ({CPUS} CPU servers, {DISKS} disk servers)"
WARM_CYCLES = 10  # at most, until one cycle sees every host answer


def _isolate() -> None:
    """Before Django reads its settings: nothing this bench queues or publishes reaches anyone."""
    tag = f"xenaoe-bench-monitor-{os.getpid()}"
    os.environ["CELERY_BROKER_URL"] = "memory://"
    os.environ["CELERY_QUEUE"] = os.environ["CHANNELS_PREFIX"] = os.environ["CACHE_PREFIX"] = tag


def _register(hosts: list) -> None:
    """The hosts as an operator would add them (no BMC), replacing whatever an earlier round left."""
    from ha.models import Incident
    from hosts.models import CpuServer, DiskServer
    from jobs.models import Job

    Job.objects.all().delete()
    Incident.objects.all().delete()
    CpuServer.objects.all().delete()
    DiskServer.objects.all().delete()
    CpuServer.objects.bulk_create([
        CpuServer(name=h.name, address=h.address, libvirt_uri=h.libvirt_uri, memory_mib=65536, vcpus=32,
                  fence_methods="storage") for h in hosts if h.role == "cpu"])
    DiskServer.objects.bulk_create([
        DiskServer(name=h.name, address=h.address, aoe_shelf=n, capacity_mib=1 << 20)
        for n, h in enumerate((h for h in hosts if h.role == "disk"), start=1)])


def _monitor():  # noqa: ANN202 - ha.monitor.Monitor, imported after Django's setup
    """As `manage.py monitor` makes it (one monitor: it leads), the SAN probe aside."""
    from django.conf import settings

    from ha.monitor import Monitor
    from ha.verdicts import SanResult

    first_timeout = float(settings.SSH_CONNECT_TIMEOUT)
    if REAL_SAN:
        return Monitor(first_timeout=first_timeout)
    return Monitor(san_probe=lambda cpu, listen: SanResult(), first_timeout=first_timeout)


def _hosts_missing(why: list[str] | None = None) -> int:
    """How many hosts missed their last check; their errors appended to `why`."""
    from hosts.models import CpuServer, DiskServer

    missing = [(name, error) for model in (CpuServer, DiskServer)
               for name, error in model.objects.filter(missed_checks__gt=0).values_list("name", "last_check_error")]
    if why is not None:
        why += [f"{name}: {error}" for name, error in missing]
    return len(missing)


def _warm(monitor) -> tuple[int, float, int]:  # noqa: ANN001
    """Cycles until one sees every host answer (the first ones open a ControlMaster and a libvirt
    connection per host); then the rows start afresh, as hosts that were always up. How many
    cycles and seconds that took, and how many hosts were declared dead on the way."""
    from ha.models import Incident
    from hosts.choices import HostState
    from hosts.models import CpuServer, DiskServer

    began, cycles = time.monotonic(), 0
    while cycles < WARM_CYCLES:
        started = time.monotonic()
        monitor.cycle()
        cycles += 1
        if not _hosts_missing():
            break
        time.sleep(max(0.0, monitor.interval - (time.monotonic() - started)))
    took, declared_dead = time.monotonic() - began, Incident.objects.count()
    for model in (CpuServer, DiskServer):
        model.objects.update(state=HostState.UP, missed_checks=0, last_check_error="")
    return cycles, took, declared_dead


def _cpu_seconds() -> float:
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


def bench_cycle(fleet_hosts: list) -> report.Figure:
    """(a): the cycle over every host, against one SSH round trip, interleaved."""
    from drivers import ssh
    from lab import fleet

    _register(fleet_hosts)
    monitor = _monitor()
    target = fleet.ssh_target(fleet_hosts[0])
    try:
        warm_cycles, warm_s, warm_dead = _warm(monitor)  # every master and libvirt connection opened afresh
        cycles, trips, missed, cpu, why = [], [], 0, [], []
        for _ in range(ROUNDS):
            started = time.perf_counter()
            ssh.run(target, ["true"], timeout=10)
            trips.append(time.perf_counter() - started)
            cpu_before, started = _cpu_seconds(), time.perf_counter()
            monitor.cycle()
            cycles.append(time.perf_counter() - started)
            cpu.append(_cpu_seconds() - cpu_before)
            missed += _hosts_missing(why)
            time.sleep(max(0.0, monitor.interval - (time.perf_counter() - started)))
    finally:
        monitor.close()
    for line in why[:5]:
        print(f"missed: {line}", flush=True)
    return report.Figure(
        SECTION, f"one cycle over {len(fleet_hosts)} hosts", "one SSH round trip", cycles, trips,
        target_p95_s=monitor.interval,
        notes={"interval": f"{monitor.interval:g} s", "missed checks of live hosts": missed,
               "panel CPU per cycle": f"{sorted(cpu)[len(cpu) // 2]:.2f} s",
               "from cold (no master, no connection)": f"{warm_cycles} cycles, {warm_s:.1f} s, "
                                                       f"{warm_dead} hosts declared dead",
               "SAN probe": "real" if REAL_SAN else "not modelled"})


class Watch:
    """`Monitor.run` in a thread of its own, as `manage.py monitor` runs it, with the end of each
    cycle and the time each change line was written noted (the monitor's own code, observed)."""

    def __init__(self, monitor) -> None:  # noqa: ANN001
        self.monitor, self.stop = monitor, threading.Event()
        self.cycle_ended = threading.Event()
        self.cycle_started = 0.0
        self.lines: list[tuple[float, str]] = []
        cycle = monitor.cycle

        def observed_cycle():  # noqa: ANN202
            self.cycle_started = time.monotonic()
            result = cycle()
            self.cycle_ended.set()
            return result

        monitor.cycle = observed_cycle
        self.thread = threading.Thread(target=monitor.run, args=(self.stop, self._out), daemon=True)

    def _out(self, line: str) -> None:
        self.lines.append((time.monotonic(), line))

    def seen(self, text: str, since: float) -> float | None:
        return next((t for t, line in self.lines if t >= since and text in line), None)

    def next_cycle_end(self) -> None:
        self.cycle_ended.clear()
        if not self.cycle_ended.wait(30):
            raise RuntimeError("the monitor ran no cycle in 30 s")


def one_kill(hosts: list, victim, phase: float) -> tuple[float, float]:  # noqa: ANN001
    """Kill `victim` among `hosts`, `phase` seconds after a cycle started; seconds from the kill to
    its first missed check and to the monitor declaring it dead."""
    from lab import fleet
    from lab.hostproc import close_control_masters

    _register(hosts)
    monitor = _monitor()
    _warm(monitor)
    watch = Watch(monitor)
    watch.thread.start()
    try:
        for _ in range(2):
            watch.next_cycle_end()
        # The loop starts a cycle every interval: kill `phase` into the next one.
        time.sleep(max(0.0, watch.cycle_started + monitor.interval + phase - time.monotonic()))
        killed = time.monotonic()
        fleet.kill(victim)
        deadline = killed + 60
        while watch.seen(f"{victim.name}: suspect -> dead", killed) is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{victim.name} was not declared dead within 60 s: {watch.lines[-5:]}")
            time.sleep(0.02)
        suspect = watch.seen(f"{victim.name}: up -> suspect", killed)
        dead = watch.seen(f"{victim.name}: suspect -> dead", killed)
    finally:
        watch.stop.set()
        watch.thread.join(30)
        monitor.close()
        fleet.boot(victim)
        close_control_masters([victim.address])  # its master still waits on the dead connection
    assert suspect is not None and dead is not None
    return suspect - killed, dead - killed


def bench_kill(fleet_hosts: list) -> list[report.Figure]:
    """(b): a dead host among all of them against among 2, interleaved, the same phase in a round."""
    from django.conf import settings

    cpus = [h for h in fleet_hosts if h.role == "cpu"]
    few = [cpus[0], next(h for h in fleet_hosts if h.role == "disk")]
    rng = random.Random(12)
    many_suspect, many_dead, few_suspect, few_dead = [], [], [], []
    for n in range(KILL_ROUNDS):
        phase = rng.uniform(0, settings.MONITOR_INTERVAL_S)
        suspect, dead = one_kill(few, few[0], phase)
        few_suspect.append(suspect)
        few_dead.append(dead)
        suspect, dead = one_kill(fleet_hosts, cpus[(1 + 37 * n) % len(cpus)], phase)
        many_suspect.append(suspect)
        many_dead.append(dead)
        print(f"kill round {n + 1}: among {len(few)} {few_dead[-1]:.2f} s, among {len(fleet_hosts)} "
              f"{many_dead[-1]:.2f} s to dead", flush=True)
    notes = {"misses to dead": settings.MONITOR_DEAD_AFTER, "interval": f"{settings.MONITOR_INTERVAL_S} s",
             "check timeout": f"{settings.MONITOR_CHECK_TIMEOUT_MS} ms"}
    return [
        report.Figure(SECTION, f"a killed host among {len(fleet_hosts)}: declared dead", f"among {len(few)}",
                      many_dead, few_dead, target=1.2, notes=notes),
        # A breakdown, no target: the same ~0.4 s more (the cycle's rows written) on a shorter time.
        report.Figure(SECTION, f"a killed host among {len(fleet_hosts)}: first missed check", f"among {len(few)}",
                      many_suspect, few_suspect),
    ]


def main() -> int:
    if os.geteuid() != 0:
        print("the monitor bench needs root: it builds a fleet of namespace hosts", file=sys.stderr)
        return 2
    _isolate()
    database.set_up(DB_NAME)
    from django.conf import settings

    from lab import fleet

    try:
        hosts = fleet.up(CPUS, DISKS)
        # The fleet's host keys: the panel verifies them as it does the lab's.
        settings.SSH_KNOWN_HOSTS_FILE = fleet.known_hosts()
        figures = [bench_cycle(hosts), *bench_kill(hosts)]
        report.save("monitor", figures)
    finally:
        fleet.down()
        database.drop(DB_NAME)
    return 0


if __name__ == "__main__":
    sys.exit(main())
