"""What the monitor makes of what it saw: pure verdicts, tested without a cluster.

A check's result (`CheckResult`, `SanResult`, `BmcResult`) and a host's state and counts go in; a
`Decision` comes out: the state to write, the misses counted, and at most one action for the monitor
(ha/monitor.py) to take once its compare-and-set on the host's row succeeded.
"""
from __future__ import annotations

from dataclasses import dataclass

from hosts.choices import HostState

Address = tuple[int, int]  # (shelf, slot)
# Hosts that are not expected to answer: they are still checked, an answer is news.
DOWN = frozenset({HostState.DEAD, HostState.FENCED})
DECLARE_DEAD, RETURNED, SAN_SUSPECT = "declare-dead", "returned", "san-suspect"
BMC_SUSPECT, WELL_AFTER_EVACUATION = "bmc-suspect", "well-after-evacuation"
STRANDED = "stranded"


@dataclass(frozen=True)
class CheckResult:
    ok: bool  # the management side answered: SSH, and libvirt on a CPU server
    error: str = ""


@dataclass(frozen=True)
class SanResult:
    """What one CPU server's AoE probe saw on the SAN (or why the probe itself failed)."""
    seen: frozenset[Address] = frozenset()
    error: str = ""


@dataclass(frozen=True)
class BmcResult:
    """What one CPU server's BMC said of its power supplies and fans, or why it said nothing."""
    failing: tuple[str, ...] = ()  # "power supply PS1 Status failed (Presence detected, Failure detected)"
    error: str = ""  # the BMC did not answer: nothing is known of the sensors (not a failure)


@dataclass(frozen=True)
class Decision:
    state: str
    missed: int
    action: str = ""


def decide(state: str, missed: int, answered: bool, dead_after: int) -> Decision:
    """One check's verdict applied to a host: a miss makes an up host suspect, `dead_after`
    consecutive misses make it dead (once), an answer makes a suspect host up again. A dead or
    fenced host that answers goes to maintenance, never straight back to up: an operator decides."""
    if answered:
        if state in DOWN:
            return Decision(HostState.MAINTENANCE, 0, RETURNED)
        if state == HostState.SUSPECT:
            return Decision(HostState.UP, 0)
        return Decision(state, 0)
    missed += 1
    if state in (HostState.UP, HostState.SUSPECT):
        if missed >= dead_after:
            return Decision(HostState.DEAD, missed, DECLARE_DEAD)
        return Decision(HostState.SUSPECT, missed)
    return Decision(state, missed)  # dead, fenced, maintenance: counted and shown, never declared again


def decide_san(decision: Decision, san_missed: int, san_ok: bool | None, dead_after: int) -> tuple[Decision, int]:
    """A CPU server whose management link answers but which sees nothing on the SAN for
    `dead_after` checks is suspect; SAN_SUSPECT (evacuate) comes once, when the count reaches it.
    san_ok None: no fresh SAN result this cycle, the count stays."""
    if decision.state not in (HostState.UP, HostState.SUSPECT):
        return decision, 0
    if decision.missed:  # management silent: that path decides, the SAN verdict waits
        return decision, san_missed
    if san_ok is True:
        return decision, 0
    if san_ok is False:
        san_missed += 1
    if san_missed >= dead_after:
        first = san_ok is False and san_missed == dead_after
        return Decision(HostState.SUSPECT, 0, SAN_SUSPECT if first else ""), san_missed
    return decision, san_missed


def decide_bmc(decision: Decision, failing: bool, was_failing: bool) -> Decision:
    """A CPU server whose management link answers but whose BMC reports a failing power supply or
    fan is suspect for as long as it does; BMC_SUSPECT (evacuate) comes once, on the reading that
    first shows the failure. `failing` is the latest reading's verdict (a BMC that does not answer
    leaves the verdict it had: silence is not a failure, nor a repair)."""
    if decision.state not in (HostState.UP, HostState.SUSPECT) or decision.missed or not failing:
        return decision  # management silent: that path decides
    # Both policies at once (SAN and BMC): one evacuation, started by the SAN's action.
    return Decision(HostState.SUSPECT, 0, decision.action or ("" if was_failing else BMC_SUSPECT))


def decide_stranded(decision: Decision, san_cut: bool, evacuation_failed: bool, has_guests: bool) -> Decision:
    """A suspect CPU server still cut from the SAN whose evacuation failed, with guests still placed
    on it, is declared dead: live migration cannot move a guest whose disk I/O hangs, and the guest
    serves nothing where it is. The failover fences the host before it restarts them, so that their
    writes waiting in the host's initiator can never land beside the new copies'."""
    if decision.state == HostState.SUSPECT and not decision.missed and san_cut and evacuation_failed and has_guests:
        return Decision(HostState.DEAD, decision.missed, STRANDED)
    return decision


def decide_well_again(old_state: str, decision: Decision, evacuated: bool) -> Decision:
    """A suspect host well again (management, SAN and BMC fine) goes back to up, unless the policy
    evacuated it meanwhile: then it is empty on purpose, and like a host that returns from dead it
    goes to maintenance, for an operator to return to service (after looking at what failed)."""
    if old_state == HostState.SUSPECT and decision.state == HostState.UP and evacuated:
        return Decision(HostState.MAINTENANCE, 0, WELL_AFTER_EVACUATION)
    return decision


def expected_throughout(now: dict[int, frozenset[Address]], at_send: list[dict[int, frozenset[Address]]],
                         ) -> dict[int, frozenset[Address]]:
    """Per disk server, the exports expected now and when each probe harvested was sent: one that
    started meanwhile may not have been heard yet, one that stopped is not missed."""
    common = {}
    for pk, addresses in now.items():
        for sent in at_send:
            addresses &= sent.get(pk, frozenset())
        if addresses:
            common[pk] = addresses
    return common
