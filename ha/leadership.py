"""Which monitor leads: one `manage.py monitor` checks the hosts and acts, any other stands by
(docs/ha.md, "Running the panel on two machines").

The leader holds a PostgreSQL session-level advisory lock on a connection of its own (not Django's:
the monitor closes that one between cycles, and a worker thread may use it). PostgreSQL releases
the lock when that session ends: at once when the process dies (its kernel closes the socket), and
when the machine dies or is cut off as soon as the server's TCP keepalives on the session give up,
which this session sets to about one monitor interval. A leader that is alive but hung (stopped,
deadlocked) stops asking about its lock each cycle; the server ends its idle session after
`hung_after_s` (idle_session_timeout, PostgreSQL 14 and later), which releases the lock too. A
monitor standing by tries to take the lock once per cycle, so the next one leads within an interval
of the release.

Leadership says who acts; it is not what makes a decision happen once. For up to one cycle a leader
cut off from the database may not know yet that it lost the lock while the next one already acts;
every decision is also guarded in the database (compare-and-set on host rows, one open incident per
host, one active failover job per incident), so such an overlap can delay a decision, never double it.

On SQLite (the demo) there is nothing to elect with: the one monitor leads (`SoleLeadership`).

The guests' figures sampler (`manage.py vm_stats`) is elected the same way, on a lock of its own
(`Role`): one sampler per site whatever the number of panel machines, the others standing by.
"""
from __future__ import annotations

import datetime
import logging
import math
import os
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg
from django.conf import settings
from django.db import connections

logger = logging.getLogger(__name__)
GAINED, LOST = "gained", "lost"


@dataclass(frozen=True)
class Role:
    """What is led: one lock and one application name per role, so that each role elects its own leader."""
    lock_keys: tuple[int, int]  # pg_try_advisory_lock(int4, int4); pg_locks: classid, objid, objsubid 2
    application_prefix: str  # in pg_stat_activity, before the node's name


# ("XAOE", 1): the host monitors. ("XAOE", 2): the guests' figures sampler (`manage.py vm_stats`).
MONITOR = Role((0x58414F45, 1), "xenaoe-monitor")
VM_STATS = Role((0x58414F45, 2), "xenaoe-vm-stats")

_HOLDS = """SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()
            AND classid = %s AND objid = %s AND objsubid = 2 AND granted)"""
_SESSIONS = """SELECT a.pid, a.application_name, host(a.client_addr), a.backend_start,
                      EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid AND l.locktype = 'advisory'
                              AND l.classid = %s AND l.objid = %s AND l.objsubid = 2 AND l.granted
                              AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()))
               FROM pg_stat_activity a
               WHERE a.datname = current_database() AND a.application_name LIKE %s
               ORDER BY a.backend_start"""


def this_node() -> str:
    """This monitor as logs, pages and pg_stat_activity name it: its panel machine and process."""
    return f"{settings.PANEL_NODE} pid {os.getpid()}"


class Leadership(Protocol):
    kind: str  # how the leader is chosen, for the log
    node: str
    is_leader: bool
    leader: str  # who leads, as far as this monitor knows ("" when nobody or unknown)
    error: str  # why the last attempt failed ("" when it did not)

    def refresh(self) -> str:
        """One attempt per cycle; GAINED, LOST or "" (no change)."""

    def close(self) -> None:
        """Stop leading (and let another take over at once)."""


class SoleLeadership:
    """One monitor and nothing to elect with (SQLite; unit tests of a single monitor): it leads."""
    kind = "the only one of its kind (no election without PostgreSQL)"

    def __init__(self, node: str | None = None) -> None:
        self.node = node or this_node()
        self.is_leader = False
        self.leader = ""
        self.error = ""

    def refresh(self) -> str:
        if self.is_leader:
            return ""
        self.is_leader, self.leader = True, self.node
        return GAINED

    def close(self) -> None:
        self.is_leader = False


@dataclass(frozen=True)
class Keepalive:
    """TCP settings for the lock's session, from the monitor interval: a silent peer is given up on
    after about one interval (1 s idle, then a probe a second, interval - 1 of them unanswered)."""
    idle_s: int
    probe_interval_s: int
    probes: int
    user_timeout_ms: int

    @classmethod
    def for_interval(cls, interval: float) -> Keepalive:
        seconds = max(1, math.ceil(interval))
        return cls(1, 1, max(1, seconds - 1), seconds * 1000)

    def client_params(self) -> dict[str, Any]:
        """libpq's: this monitor notices a dead database server."""
        return {"keepalives": 1, "keepalives_idle": self.idle_s, "keepalives_interval": self.probe_interval_s,
                "keepalives_count": self.probes, "tcp_user_timeout": self.user_timeout_ms}

    def server_settings(self) -> dict[str, int]:
        """The server's, for this session only: PostgreSQL notices a dead monitor machine and ends the
        session, which releases the lock."""
        return {"tcp_keepalives_idle": self.idle_s, "tcp_keepalives_interval": self.probe_interval_s,
                "tcp_keepalives_count": self.probes, "tcp_user_timeout": self.user_timeout_ms}


class AdvisoryLockLeadership:
    """Leadership as a PostgreSQL session-level advisory lock held on a dedicated connection."""
    kind = "elected by a PostgreSQL advisory lock"

    def __init__(self, *, interval: float, node: str | None = None, alias: str = "default",
                 hung_after_s: float | None = None, role: Role = MONITOR) -> None:
        self.node = node or this_node()
        self.role = role
        self.interval = interval
        # Generous: a slow cycle (the database busy, a takeover's resume) must not cost the lead.
        self.hung_after_s = hung_after_s if hung_after_s is not None else max(5.0, 5 * interval)
        self.alias = alias
        self.keepalive = Keepalive.for_interval(interval)
        self.is_leader = False
        self.leader = ""
        self.error = ""
        self._conn: psycopg.Connection | None = None

    def refresh(self) -> str:
        """A leader checks that its session still holds the lock; a monitor standing by tries to take
        it. A connection that fails is dropped (its lock, if it had it, is gone with it)."""
        was = self.is_leader
        try:
            conn = self._connection()
            self.is_leader = _holds(conn, self.role) if was else _try_lock(conn, self.role)
            self.leader = self.node if self.is_leader else _leader_name(conn, self.role)
            self.error = ""
        except psycopg.Error as exc:
            self._drop()
            self.is_leader, self.leader = False, ""
            self.error = f"{type(exc).__name__}: {str(exc).strip()[:300]}"
        if self.is_leader and not was:
            return GAINED
        return LOST if was and not self.is_leader else ""

    def close(self) -> None:
        """Let go of the lead now: unlocked on the session before it ends. Ending the session alone
        releases the lock too, but only once the server's backend has noticed and exited, which a
        busy server does a moment after the client returns: a standby asking then finds it held."""
        if self.is_leader and self._conn is not None and not self._conn.closed:
            try:
                self._conn.execute("SELECT pg_advisory_unlock(%s, %s)", self.role.lock_keys)
            except psycopg.Error:
                pass  # the session is broken: ending it is all that is left, and releases the lock
        self._drop()
        self.is_leader = False

    def _connection(self) -> psycopg.Connection:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        params = connections[self.alias].get_connection_params()
        for django_only in ("cursor_factory", "context", "prepare_threshold"):
            params.pop(django_only, None)
        name = f"{self.role.application_prefix} {self.node}"[:63]
        params.update(self.keepalive.client_params(), application_name=name,
                      connect_timeout=max(2, math.ceil(self.interval)), autocommit=True)
        conn = psycopg.connect(**params)
        try:
            with conn.cursor() as cur:
                for name, value in self.keepalive.server_settings().items():
                    cur.execute(f"SET {name} = {int(value)}")  # noqa: S608 - names are ours, values ints
                cur.execute(f"SET statement_timeout = {max(1000, int(self.interval * 1000))}")  # noqa: S608
                if conn.info.server_version >= 140000:
                    cur.execute(f"SET idle_session_timeout = {int(self.hung_after_s * 1000)}")  # noqa: S608
        except psycopg.Error:
            conn.close()
            raise
        self._conn = conn
        return conn

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass  # already broken: closing is all that was left to do
            self._conn = None


def _try_lock(conn: psycopg.Connection, role: Role) -> bool:
    row = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", role.lock_keys).fetchone()
    return bool(row and row[0])


def _holds(conn: psycopg.Connection, role: Role) -> bool:
    row = conn.execute(_HOLDS, role.lock_keys).fetchone()
    return bool(row and row[0])


def _leader_name(conn: psycopg.Connection, role: Role) -> str:
    for session in _sessions(conn, role):
        if session.leads:
            return session.name
    return ""


def leadership_for(interval: float, role: Role = MONITOR) -> Leadership:
    """An elected leadership on PostgreSQL; on SQLite the one process of the role leads."""
    if connections["default"].vendor == "postgresql":
        return AdvisoryLockLeadership(interval=interval, role=role)
    return SoleLeadership()


# --- who leads, for pages ------------------------------------------------------------------------

@dataclass(frozen=True)
class MonitorSession:
    name: str  # "panel1 pid 4242"
    address: str  # the panel machine's address as PostgreSQL sees it ("" over a local socket)
    since: datetime.datetime | None
    leads: bool


def _sessions(conn: Any, role: Role = MONITOR) -> list[MonitorSession]:
    """Every process of the role connected to this database (their lock sessions), the leader marked."""
    prefix = f"{role.application_prefix} "
    with conn.cursor() as cur:
        cur.execute("SELECT pg_stat_clear_snapshot()")  # within a transaction, pg_stat_activity is frozen
        cur.execute(_SESSIONS, [*role.lock_keys, f"{prefix}%"])
        rows = cur.fetchall()
    return [MonitorSession(name.removeprefix(prefix), address or "", since, bool(leads))
            for _pid, name, address, since, leads in rows]


def monitor_sessions() -> list[MonitorSession] | None:
    """The monitors as the database sees them (for the dashboard), through Django's connection;
    None where leadership is not elected (SQLite)."""
    connection = connections["default"]
    if connection.vendor != "postgresql":
        return None
    return _sessions(connection)
