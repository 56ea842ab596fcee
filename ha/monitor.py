"""The host monitor: every host checked each cycle, in parallel, and what it saw turned into host states.

The checks are I/O (SSH, libvirt, an AoE probe on the SAN, the BMC's sensors) and sit behind
injectable functions; the transitions are pure (ha/verdicts.py), so they are tested without a cluster. Every write
to a host row is a compare-and-set on the state the cycle read (hosts/states.py, as for every other
writer): two monitors running at once never both act on a transition, and a state set meanwhile by
someone else (fencing, maintenance) is never overwritten — the next cycle reads it.

The monitor decides and records (the host's state, an incident); what acts on a decision is a job
it queues through the verbs of ha/failover.py and ha/maintenance.py, run by a worker. Nothing it
queues calls back into it.

Only the leading monitor checks and acts (ha/leadership.py: a PostgreSQL advisory lock); another one
stands by, trying to take the lead each cycle. One that takes over first finishes the decisions its
predecessor left half taken (ha/takeover.py).
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from typing import Any

from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from drivers import aoe, hypervisor, ipmi, ssh
from drivers.errors import DriverError
from ha import failover, maintenance, storage_health, takeover
from ha.choices import EventKind, IncidentKind, IncidentState
from ha.incidents import open_incident, record
from ha.leadership import GAINED, LOST, Leadership, SoleLeadership
from ha.models import Incident
from ha.verdicts import (
    BMC_SUSPECT,
    DECLARE_DEAD,
    DOWN,
    RETURNED,
    SAN_SUSPECT,
    STRANDED,
    WELL_AFTER_EVACUATION,
    Address,
    BmcResult,
    CheckResult,
    Decision,
    SanResult,
    decide,
    decide_bmc,
    decide_san,
    decide_stranded,
    decide_well_again,
    expected_throughout,
)
from hosts import history
from hosts.choices import HostState
from hosts.models import CpuServer, DiskServer
from hosts.states import Host, change_state
from hosts.targets import bmc_target, ssh_target
from jobs.choices import JobState
from jobs.models import Job
from metrics import cycle_time
from storage.guest_health import GuestHealthWatch
from vms.models import VirtualMachine

logger = logging.getLogger(__name__)
# --- the checks (I/O) --------------------------------------------------------------------------

def check_host(host: Host, timeout: float) -> CheckResult:
    """SSH answers (a no-op command); on a CPU server libvirt answers too, within one timeout."""
    deadline = time.monotonic() + timeout
    target = replace(ssh_target(host), connect_timeout=max(1, int(timeout)))
    try:
        ssh.ping(target, timeout=timeout)
        if isinstance(host, CpuServer):
            hypervisor.host_info(host.libvirt_uri, timeout=max(0.1, deadline - time.monotonic()))
    except DriverError as exc:
        return CheckResult(False, str(exc))
    return CheckResult(True)


def probe_san(host: CpuServer, listen: float) -> SanResult:
    """One Query Config broadcast from the CPU server (no IDENTIFY): which exports answer it.
    Its timeout is the driver's (listen + SSH margin): it runs beside the cycle, not inside it."""
    try:
        answers = aoe.probe(ssh_target(host), host.san_interface, identify=False, listen=listen,
                            timeout=listen + aoe.SSH_MARGIN + 1)
    except DriverError as exc:
        return SanResult(error=str(exc))
    return SanResult(frozenset((a.shelf, a.slot) for a in answers))


def read_bmc(host: CpuServer, timeout: float) -> BmcResult:
    """The BMC's power supply and fan sensors, through ipmitool lanplus as for fencing (each call
    within `timeout`). It runs beside the cycle, at most one per CPU server in flight."""
    try:
        sensors = ipmi.read_sensors(bmc_target(host, timeout))
    except DriverError as exc:
        return BmcResult(error=str(exc))
    return BmcResult(tuple(sensor.describe() for sensor in sensors if sensor.failing))


# --- the cycle -----------------------------------------------------------------------------------

@dataclass
class CycleReport:
    duration_s: float = 0.0
    states: dict[str, str] = field(default_factory=dict)  # "cpu1": "up"
    changes: list[str] = field(default_factory=list)  # what an operator reads in the log
    leading: bool = True  # False: another monitor leads, this one checked nothing and changed nothing


CheckFn = Callable[[Host, float], CheckResult]
SanFn = Callable[[CpuServer, float], SanResult]
BmcFn = Callable[[CpuServer, float], BmcResult]



class Monitor:
    def __init__(self, *, check: CheckFn = check_host, san_probe: SanFn = probe_san,
                 interval: float | None = None, dead_after: int | None = None, timeout: float | None = None,
                 san_listen: float | None = None, evacuate: bool | None = None,
                 guest_health: GuestHealthWatch | None = None, bmc_read: BmcFn = read_bmc,
                 bmc_interval: float | None = None, evacuate_on_bmc: bool | None = None,
                 leadership: Leadership | None = None, first_timeout: float | None = None) -> None:
        self.check, self.san_probe = check, san_probe
        self.interval = interval if interval is not None else float(settings.MONITOR_INTERVAL_S)
        self.dead_after = dead_after if dead_after is not None else settings.MONITOR_DEAD_AFTER
        self.timeout = timeout if timeout is not None else settings.MONITOR_CHECK_TIMEOUT_MS / 1000
        # The checks of the first cycle this monitor leads open every host's SSH master and libvirt
        # connection (a key exchange each): given only `timeout`, a large site's first cycles miss
        # most hosts and declare healthy ones dead (130 of 220 in the lab). None: `timeout`.
        self.first_timeout = max(first_timeout or 0.0, self.timeout)
        self._first_cycle = True  # set again whenever this monitor takes the lead
        self.san_listen = san_listen if san_listen is not None else settings.MONITOR_SAN_LISTEN_MS / 1000
        self.evacuate = evacuate if evacuate is not None else settings.EVACUATE_ON_SAN_LOSS
        # BMC sensors (power supplies, fans) of CPU servers that have a BMC: every bmc_interval
        # seconds (0: never), in the background, each ipmitool call within bmc_timeout.
        self.bmc_read = bmc_read
        self.bmc_interval = bmc_interval if bmc_interval is not None else float(settings.MONITOR_BMC_INTERVAL_S)
        self.bmc_timeout = float(settings.MONITOR_BMC_TIMEOUT_S)
        self.evacuate_on_bmc = evacuate_on_bmc if evacuate_on_bmc is not None else settings.EVACUATE_ON_BMC_FAILURE
        self._bmc_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="monitor-bmc")
        self._bmc_reads: dict[int, Future[BmcResult]] = {}
        self._bmc_read_at: dict[int, float] = {}  # monotonic time of each CPU server's last read
        self._bmc_failing: dict[int, tuple[str, ...]] = {}  # the latest verdict; in memory, like _san_missed
        self._bmc_errors: dict[int, str] = {}  # why the latest read got no answer ("" when it did)
        self._pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="monitor-check")
        self._san_pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="monitor-san")
        # At most one check and one probe in flight per host: a hung one is a miss, never a pile-up.
        self._checks: dict[tuple[str, int], Future[CheckResult]] = {}
        self._probes: dict[int, Future[SanResult]] = {}
        # What each probe in flight may be held to: the exports expected when it was sent (an export
        # started while it listened, e.g. a new VM's leg, is not a silent one).
        self._probe_expected: dict[int, dict[int, frozenset[Address]]] = {}
        self._san_missed: dict[int, int] = {}  # per CPU server; in memory: a restart only delays
        self._published: dict[tuple[str, int], tuple[str, int, str]] = {}
        self.recovery = storage_health.DiskRecovery()
        # Mirror health read inside the guests, in the background (None: not here, e.g. unit tests).
        self.guest_health = guest_health
        # Who acts: by default this monitor alone; `manage.py monitor` elects one (ha/leadership.py).
        self.leadership = leadership if leadership is not None else SoleLeadership()
        self._leader_seen = ""  # the leader last logged while standing by
        self._resume_pending = False  # took the lead, not yet finished the last leader's decisions

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._san_pool.shutdown(wait=False, cancel_futures=True)
        self._bmc_pool.shutdown(wait=False, cancel_futures=True)
        if self.guest_health is not None:
            self.guest_health.close()
        self.leadership.close()

    def run(self, stop: threading.Event, out: Callable[[str], None] = print) -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                report = self.cycle()
                for line in report.changes:
                    out(line)
                cycle_time.after_cycle(report.duration_s, report.leading)  # for /metrics
            except Exception:  # the database or Redis away for a moment: keep watching
                logger.exception("monitor cycle failed")
            finally:
                close_old_connections()
            stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def cycle(self) -> CycleReport:
        started = time.monotonic()
        report = CycleReport()
        if not self._may_act(report):
            report.duration_s = time.monotonic() - started
            return report
        cpus, disks = list(CpuServer.objects.all()), list(DiskServer.objects.all())
        expected_at_send = storage_health.expected_exports()
        for cpu in cpus:
            if cpu.pk not in self._probes and cpu.state not in DOWN:
                self._probes[cpu.pk] = self._san_pool.submit(self.san_probe, cpu, self.san_listen)
                self._probe_expected[cpu.pk] = expected_at_send
            if self._bmc_due(cpu):
                self._bmc_read_at[cpu.pk] = time.monotonic()
                self._bmc_reads[cpu.pk] = self._bmc_pool.submit(self.bmc_read, cpu, self.bmc_timeout)
        hosts: list[tuple[str, Host]] = [("cpu", h) for h in cpus] + [("disk", h) for h in disks]
        timeout, self._first_cycle = (self.first_timeout if self._first_cycle else self.timeout), False
        for kind, host in hosts:
            if (kind, host.pk) not in self._checks:
                self._checks[(kind, host.pk)] = self._pool.submit(self.check, host, timeout)
        # Checks time out by themselves; the margin covers thread and process start-up.
        wait([*self._checks.values(), *self._probes.values(), *self._bmc_reads.values()],
             timeout=max(0.0, started + timeout + 0.2 - time.monotonic()))
        results = {key: self._harvest_check(key) for key in [(kind, h.pk) for kind, h in hosts]}
        sans = self._harvest_probes()
        bmcs = self._harvest_bmc_reads()
        expected = expected_throughout(storage_health.expected_exports(),
                                        [self._probe_expected.pop(pk, {}) for pk in sans])
        up_disks = {d.pk for d in disks if d.state == HostState.UP}
        cpu_expected = frozenset().union(*(expected.get(pk, frozenset()) for pk in up_disks))
        san_ok = {pk: not r.error and (not cpu_expected or bool(r.seen & cpu_expected)) for pk, r in sans.items()}
        # The SAN as the CPU servers whose own SAN works see it; None when no such view this cycle.
        views = [r.seen for pk, r in sans.items() if san_ok[pk]]
        wire: frozenset[Address] | None = frozenset().union(*views) if views else None
        for cpu in cpus:
            result = results[("cpu", cpu.pk)]
            decision = decide(cpu.state, cpu.missed_checks, result.ok, self.dead_after)
            decision, self._san_missed[cpu.pk] = decide_san(
                decision, self._san_missed.get(cpu.pk, 0), san_ok.get(cpu.pk), self.dead_after)
            failing, was_failing = self._bmc_verdict(cpu, bmcs.get(cpu.pk), report)
            decision = decide_bmc(decision, bool(failing), bool(was_failing))
            if cpu.state == HostState.SUSPECT and san_ok.get(cpu.pk) is False:
                decision = decide_stranded(decision, True, self._evacuation_failed(cpu),
                                           VirtualMachine.objects.filter(cpu_server=cpu).exists())
            evacuated = (cpu.state == HostState.SUSPECT and decision.state == HostState.UP
                         and self._evacuation_since_suspect(cpu) is not None)
            decision = decide_well_again(cpu.state, decision, evacuated)
            error = result.error
            if result.ok:
                problems = []
                if san_ok.get(cpu.pk) is False:
                    problems.append(f"SAN: {sans[cpu.pk].error or 'none of the expected exports answers'}")
                problems += [f"BMC: {failure}" for failure in failing]
                if self._bmc_errors.get(cpu.pk):
                    problems.append(f"BMC sensors not read: {self._bmc_errors[cpu.pk]}")
                error = "; ".join(problems)
            self._apply(cpu, decision, result.ok, error, report)
        for disk in disks:
            result = results[("disk", disk.pk)]
            answered, error = result.ok, result.error
            mine = expected.get(disk.pk, frozenset())
            # A returning disk server is back when SSH answers: its exports are restored after that.
            if answered and disk.state not in DOWN and wire is not None and mine and not mine & wire:
                answered, error = False, f"none of its {len(mine)} exports answers on the SAN"
            self._apply(disk, decide(disk.state, disk.missed_checks, answered, self.dead_after),
                        result.ok, error, report)
            if result.ok:
                self.recovery.recover(disk, wire, report.changes)
        if self.guest_health is not None:
            self.guest_health.tick(report.changes)
        history.record_cycle()  # the CPU servers' history plot: at most once per interval
        report.duration_s = time.monotonic() - started
        return report

    # --- leadership: only the leader checks and acts -----------------------------------------------

    def _may_act(self, report: CycleReport) -> bool:
        """Whether this monitor leads this cycle (one attempt: keep the lead, or try to take it).
        On taking over it first finishes what the last leader left half taken; on losing the lead
        it forgets what it counted, which the next leader counts afresh."""
        change = self.leadership.refresh()
        report.leading = self.leadership.is_leader
        if change == GAINED:
            report.changes.append(f"{self.leadership.node}: leading the monitors")
            self._leader_seen, self._resume_pending, self._first_cycle = "", True, True
        elif change == LOST:
            why = f": {self.leadership.error}" if self.leadership.error else ""
            report.changes.append(f"{self.leadership.node}: no longer leading{why}; standing by")
            self._forget_episodes()
        if not report.leading and self.leadership.leader != self._leader_seen:
            self._leader_seen = self.leadership.leader
            report.changes.append(f"{self.leadership.node}: standing by; " + (
                f"{self.leadership.leader} leads" if self.leadership.leader else
                f"no monitor leads ({self.leadership.error or 'the lead is being taken'})"))
        if report.leading and self._resume_pending:
            self._resume_after_takeover(report)  # raises (the database away)? the next cycle tries again
            self._resume_pending = False
        return report.leading

    def _resume_after_takeover(self, report: CycleReport) -> None:
        dead, unstarted = takeover.dead_without_incident(), takeover.incidents_without_failover()
        for host in dead:
            self._declare_dead(host, f"{host.name} was declared dead ({host.last_check_error or 'no answer'}); "
                                     "the monitor that led stopped before acting on it", report)
        for incident in unstarted:
            takeover.resume_failover(incident, report.changes)
        takeover.resend_unclaimed_failovers(report.changes)

    def _forget_episodes(self) -> None:
        """What only a leader keeps in memory (counts, verdicts, what it published, restores done,
        checks in flight: their answers would be stale by the time it leads again)."""
        self._resume_pending = False
        self._checks.clear()
        self._probes.clear()
        self._probe_expected.clear()
        self._bmc_reads.clear()
        self._san_missed.clear()
        self._bmc_failing.clear()
        self._bmc_errors.clear()
        self._published.clear()
        self.recovery = storage_health.DiskRecovery()

    def _harvest_check(self, key: tuple[str, int]) -> CheckResult:
        future = self._checks[key]
        if not future.done():
            return CheckResult(False, f"no answer within {self.timeout:g} s")
        del self._checks[key]
        try:
            return future.result()
        except Exception as exc:  # a bug in a check is a miss, and worth a traceback in the log
            logger.exception("check of %s raised", key)
            return CheckResult(False, f"check raised {type(exc).__name__}: {exc}")

    def _harvest_probes(self) -> dict[int, SanResult]:
        done = {}
        for pk, future in list(self._probes.items()):
            if future.done():
                del self._probes[pk]
                try:
                    done[pk] = future.result()
                except Exception as exc:
                    logger.exception("SAN probe of CPU server %s raised", pk)
                    done[pk] = SanResult(error=f"probe raised {type(exc).__name__}: {exc}")
        return done

    def _bmc_due(self, cpu: CpuServer) -> bool:
        if cpu.state not in (HostState.UP, HostState.SUSPECT) or not cpu.bmc_address:
            # Not watched (dead, fenced, in maintenance, no BMC): a later episode starts afresh.
            self._bmc_failing.pop(cpu.pk, None)
            self._bmc_errors.pop(cpu.pk, None)
            return False
        if self.bmc_interval <= 0 or cpu.pk in self._bmc_reads:
            return False
        return time.monotonic() - self._bmc_read_at.get(cpu.pk, float("-inf")) >= self.bmc_interval

    def _harvest_bmc_reads(self) -> dict[int, BmcResult]:
        done = {}
        for pk, future in list(self._bmc_reads.items()):
            if future.done():
                del self._bmc_reads[pk]
                try:
                    done[pk] = future.result()
                except Exception as exc:
                    logger.exception("BMC sensor read of CPU server %s raised", pk)
                    done[pk] = BmcResult(error=f"read raised {type(exc).__name__}: {exc}")
        return done

    def _bmc_verdict(self, cpu: CpuServer, fresh: BmcResult | None,
                     report: CycleReport) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(failing now, failing before) from the newest reading; no reading, or a BMC that did not
        answer, keeps the last verdict. A BMC falling silent or answering again is logged once."""
        before = self._bmc_failing.get(cpu.pk, ())
        if fresh is None:
            return before, before
        if fresh.error != self._bmc_errors.get(cpu.pk, ""):
            report.changes.append(f"{cpu.name}: BMC sensors not read: {fresh.error}" if fresh.error
                                  else f"{cpu.name}: BMC answers again")
        self._bmc_errors[cpu.pk] = fresh.error
        if fresh.error:
            return before, before
        self._bmc_failing[cpu.pk] = fresh.failing
        if before and not fresh.failing:
            report.changes.append(f"{cpu.name}: BMC reports every power supply and fan well again")
        return fresh.failing, before

    def _evacuation_failed(self, host: CpuServer) -> bool:
        job = self._evacuation_since_suspect(host)
        return job is not None and job.state in (JobState.FAILED, JobState.ERRORED)

    def _evacuation_since_suspect(self, host: CpuServer) -> Job | None:
        """The host.evacuate job started since the host turned suspect, if any (the policy's)."""
        jobs = Job.objects.filter(kind=maintenance.EVACUATE, params__host=host.name)
        if host.state_changed_at is not None:
            jobs = jobs.filter(created_at__gte=host.state_changed_at)
        return jobs.order_by("-pk").first()

    def _apply(self, host: Host, decision: Decision, answered: bool, error: str, report: CycleReport) -> None:
        fields: dict[str, Any] = {"missed_checks": decision.missed, "last_check_error": error[:2000]}
        if answered:
            fields["last_seen_at"] = timezone.now()
        # Published only when what the pages show changed: not every cycle for every host.
        seen = (decision.state, decision.missed, fields["last_check_error"])
        key = ("cpu" if isinstance(host, CpuServer) else "disk", host.pk)
        news = self._published.get(key) != seen
        old = host.state
        # Compare-and-set: someone else (a second monitor, fencing, maintenance) changed the state
        # since this cycle read it: do nothing, the next cycle reads the new state.
        if not change_state(host, decision.state, publish=news, **fields):
            return
        if news:
            self._published[key] = seen
        report.states[host.name] = host.state
        if old != host.state:
            report.changes.append(f"{host.name}: {old} -> {host.state}" + (f" ({error})" if error else ""))
        if decision.action == DECLARE_DEAD:
            self._declare_dead(host, f"{host.name} missed {decision.missed} checks: {error}", report)
        elif decision.action == STRANDED:
            self._declare_dead(host, f"{host.name} is cut from the SAN ({error}) and its guests could not be moved "
                               "live: declared dead, to be fenced before they restart elsewhere", report)
        elif decision.action == RETURNED:
            self._returned(host, report)
        elif decision.action == SAN_SUSPECT:
            self._suspect_by_policy(host, f"{host.name} answers on its management link but not on the SAN "
                                    f"({self._san_missed.get(host.pk, 0)} checks): {error}", report)
        elif decision.action == BMC_SUSPECT:
            failures = "; ".join(f"BMC: {failure}" for failure in self._bmc_failing.get(host.pk, ()))
            self._suspect_by_policy(host, f"{host.name}: {failures}", report, evacuate=self.evacuate_on_bmc)
        elif decision.action == WELL_AFTER_EVACUATION:
            report.changes.append(f"{host.name} is well again, but its guests were evacuated: in maintenance "
                                  "until an operator returns it to service")

    def _declare_dead(self, host: Host, message: str, report: CycleReport) -> None:
        if isinstance(host, DiskServer):
            storage_health.disk_server_failed(host, message)
            report.changes.append(f"{host.name}: disk server failed, mirrors degraded")
            return
        incident, created = open_incident(host, IncidentKind.CPU_SERVER_FAILED, message)
        if not created:  # an earlier failover of this host is still going on: it owns the guests
            record(incident, EventKind.NOTE, f"{host.name} declared dead again while this incident is open")
            return
        report.changes.append(f"{host.name}: incident #{incident.pk} opened, starting failover")
        job = failover.start_failover_noted(incident)
        if job is not None:
            report.changes.append(f"{host.name}: failover job #{job.pk}")

    def _returned(self, host: Host, report: CycleReport) -> None:
        kind = IncidentKind.CPU_SERVER_FAILED if isinstance(host, CpuServer) else IncidentKind.DISK_SERVER_FAILED
        incidents = Incident.objects.filter(host_name=host.name, kind=kind)
        incident = incidents.exclude(state=IncidentState.CLOSED).first() or incidents.first()
        message = f"{host.name} answers again: in maintenance until an operator returns it to service"
        if isinstance(host, CpuServer) and host.storage_fenced_at is not None:
            # Its old guest copies may still run there, I/O blocked: ha/readmit.py lifts the fence.
            message += ("; its storage fence stands (left out of every export) until then, and returning it "
                        "first destroys its copies of guests restarted elsewhere")
        if incident is not None:
            record(incident, EventKind.RETURNED, message)
        report.changes.append(message)

    def _suspect_by_policy(self, host: Host, reason: str, report: CycleReport, *,
                           evacuate: bool | None = None) -> None:
        """A suspect CPU server under a policy (SAN loss, BMC failure): evacuate it if that policy says so."""
        report.changes.append(reason)
        if not (self.evacuate if evacuate is None else evacuate) or not isinstance(host, CpuServer):
            return
        try:
            job = maintenance.evacuate_suspect(host, reason)
        except Exception:
            logger.exception("evacuate_suspect failed for %s", host.name)
            return
        report.changes.append(
            f"{host.name}: evacuation job #{job.pk}" if job else f"{host.name}: an evacuation is already under way"
        )
