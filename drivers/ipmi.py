"""Chassis power of a host through its BMC, and the BMC's power supply and fan sensors, with
`ipmitool -I lanplus` (IPMI 2.0 over LAN).

The password is given by file (`-f`), never on the command line (where `ps` shows it) nor in the
environment. ipmitool's stdin is /dev/null: without a readable password file it would otherwise
prompt for one and hang. Every call has a subprocess timeout, and output is parsed strictly: for
fencing, anything that is not exactly "Chassis Power is off" is not "off".
"""
from __future__ import annotations

import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from drivers import guard
from drivers.errors import DriverError

IPMITOOL = "ipmitool"
# Cipher suite 3 (RMCP+ HMAC-SHA1 authentication and integrity, AES-CBC-128): supported by
# practically every BMC and by ipmi_sim. Without -C, ipmitool 1.8.19 first asks for the cipher
# suites (17 and up), which older BMCs and ipmi_sim do not answer: ~10 s lost on every call.
DEFAULT_CIPHER_SUITE = 3
STATUS_RE = re.compile(r"\AChassis Power is (on|off)\n?\Z")
EXPECTED_CONTROL = {"off": "Chassis Power Control: Down/Off", "on": "Chassis Power Control: Up/On"}
POLL_INTERVAL = 0.5


@dataclass(frozen=True)
class BmcTarget:
    address: str
    port: int
    user: str
    password_file: Path | str  # a file holding the password (CpuServer.bmc_password_file)
    timeout: float = 10.0  # seconds for one ipmitool call, session set-up and retries included
    cipher_suite: int = DEFAULT_CIPHER_SUITE

    @property
    def label(self) -> str:
        return f"BMC {self.address}:{self.port}"


def _argv(t: BmcTarget, command: list[str]) -> list[str]:
    # -N/-R: 1 s per try, 2 retries, so that a silent BMC fails within the subprocess timeout with
    # ipmitool's own message rather than being cut off.
    return [IPMITOOL, "-I", "lanplus", "-C", str(t.cipher_suite), "-N", "1", "-R", "2",
            "-H", t.address, "-p", str(t.port), "-U", t.user, "-f", str(t.password_file), *command]


def _ipmitool(t: BmcTarget, command: list[str]) -> str:
    """Run ipmitool; return its stdout, or raise DriverError (permanent for a missing or unreadable
    password file, transient for a timeout or an unanswered session)."""
    guard.before_host_call()
    path = Path(t.password_file)
    if not path.is_file() or not os.access(path, os.R_OK):
        raise DriverError(f"{t.label}: password file {path} is missing or unreadable", permanent=True)
    argv = _argv(t, command)
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=t.timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise DriverError(f"{t.label}: `ipmitool {' '.join(command)}` timed out after {t.timeout:g} s") from exc
    except FileNotFoundError as exc:
        raise DriverError(f"{t.label}: {IPMITOOL} is not installed", permanent=True) from exc
    if proc.returncode != 0:
        detail = " ".join(proc.stderr.split()) or f"exit {proc.returncode}"
        raise DriverError(f"{t.label}: `ipmitool {' '.join(command)}` failed: {detail}")
    return proc.stdout


def parse_power_status(output: str) -> str:
    """"on" or "off" from `ipmitool chassis power status`; anything else raises DriverError."""
    match = STATUS_RE.match(output)
    if match is None:
        raise DriverError(f"unexpected `chassis power status` output: {output!r}", permanent=True)
    return match.group(1)


def _check_control(t: BmcTarget, state: str, output: str) -> None:
    if output.strip() != EXPECTED_CONTROL[state]:
        raise DriverError(f"{t.label}: unexpected `chassis power {state}` output: {output!r}", permanent=True)


def power_status(t: BmcTarget) -> str:
    """"on" | "off" as the BMC reports it."""
    output = _ipmitool(t, ["chassis", "power", "status"])
    try:
        return parse_power_status(output)
    except DriverError as exc:
        raise DriverError(f"{t.label}: {exc}", permanent=True) from exc


def power_off(t: BmcTarget, *, confirm_timeout: float = 30) -> None:
    """Chassis power off, then poll the status until the BMC reports "off". Raises DriverError if
    the command fails or "off" is not confirmed within `confirm_timeout` seconds: the caller must
    then treat the host as NOT fenced."""
    _check_control(t, "off", _ipmitool(t, ["chassis", "power", "off"]))
    deadline = time.monotonic() + confirm_timeout
    last = "no answer yet"
    while True:
        try:
            state = power_status(t)
            if state == "off":
                return
            last = f"still {state}"
        except DriverError as exc:
            last = str(exc)
        if time.monotonic() >= deadline:
            raise DriverError(f"{t.label}: power off not confirmed within {confirm_timeout:g} s ({last})")
        time.sleep(POLL_INTERVAL)


def power_on(t: BmcTarget) -> None:
    """Chassis power on (the BMC acknowledges; the host then boots on its own time)."""
    _check_control(t, "on", _ipmitool(t, ["chassis", "power", "on"]))


# --- health sensors -------------------------------------------------------------------------------
# `ipmitool sdr type "Power Supply"` / `sdr type Fan` print one line per sensor of that type,
#   PS1 Status       | 30h | ok  | 10.1 | Presence detected, Failure detected
#   Fan1             | 40h | lcr | 29.1 | 800 RPM
# name | sensor number | status | entity id.instance | reading. The status column is ipmitool's verdict
# for threshold sensors (ok, lnc/lcr/lnr, unc/ucr/unr; `ns` when there is no reading); a discrete
# sensor (a power supply's status) says "ok" whenever it reads, its states are in the reading text.
POWER_SUPPLY, FAN = "power supply", "fan"
SENSOR_TYPES = {POWER_SUPPLY: "Power Supply", FAN: "Fan"}  # ipmitool's names of types 0x08 and 0x04
OK, FAILED, ABSENT = "ok", "failed", "absent"
# Power supply states (sensor type 0x08, offsets 1-4) that mean it no longer feeds the board, or is
# about to stop: ipmitool's own wording.
PSU_FAILURES = ("Failure detected", "Predictive failure", "Power Supply AC lost", "AC lost or out-of-range")
# Threshold states at which a fan counts as failed: critical and non-recoverable. Non-critical
# (lnc/unc) is a warning threshold, not a failure.
FAN_FAILURES = frozenset({"lcr", "lnr", "ucr", "unr", "cr", "nr"})
NO_READING = "ns"
SDR_LINE_RE = re.compile(r"\A(?P<name>[^|]*?)\s*\|\s*(?P<number>[0-9A-Fa-f]{2})h\s*\|\s*(?P<code>[a-z]+)\s*\|"
                         r"\s*(?P<entity>\d+\.\d+)\s*\|\s?(?P<reading>.*?)\s*\Z")


@dataclass(frozen=True)
class Sensor:
    name: str  # the BMC's name of the sensor: "PS1 Status", "FAN1"
    kind: str  # POWER_SUPPLY | FAN
    status: str  # OK | FAILED | ABSENT
    reading: str  # ipmitool's reading text: "Presence detected, Failure detected", "800 RPM"
    code: str = OK  # ipmitool's status column: ok, lcr, lnr, ns, ...

    @property
    def failing(self) -> bool:
        return self.status == FAILED

    def describe(self) -> str:
        """'power supply PS1 Status failed (Presence detected, Failure detected)', 'fan FAN2 failed (lcr, 800 RPM)'."""
        detail = self.reading if self.kind == POWER_SUPPLY else f"{self.code}, {self.reading}"
        return f"{self.kind} {self.name} {self.status}" + (f" ({detail})" if detail else "")


def _classify(kind: str, code: str, reading: str) -> str:
    if code == NO_READING:  # an empty bay, a sensor that is disabled: nothing to judge
        return ABSENT
    if kind == POWER_SUPPLY:
        if any(state in reading for state in PSU_FAILURES):
            return FAILED
        # A discrete power supply sensor with no state asserted has nothing in its bay. Others of
        # type 0x08 (a redundancy sensor: "Fully Redundant") say nothing about one supply.
        return ABSENT if not reading else OK
    return FAILED if code in FAN_FAILURES else OK


def parse_sdr_type(output: str, kind: str) -> list[Sensor]:
    """The sensors in `ipmitool sdr type "Power Supply"|Fan` output; a line that is not a sensor
    line raises DriverError (permanent): guessing at health is worse than not knowing it."""
    sensors = []
    for line in output.splitlines():
        if not line.strip():
            continue
        match = SDR_LINE_RE.match(line)
        if match is None:
            raise DriverError(f"unexpected `sdr type {SENSOR_TYPES[kind]}` line: {line!r}", permanent=True)
        code, reading = match.group("code"), match.group("reading")
        sensors.append(Sensor(match.group("name"), kind, _classify(kind, code, reading), reading, code))
    return sensors


def read_sensors(t: BmcTarget) -> list[Sensor]:
    """The BMC's power supply and fan sensors (two ipmitool calls, each within t.timeout). Raises
    DriverError when the BMC does not answer: that says nothing about the sensors."""
    sensors: list[Sensor] = []
    for kind, type_name in SENSOR_TYPES.items():
        output = _ipmitool(t, ["sdr", "type", type_name])
        try:
            sensors += parse_sdr_type(output, kind)
        except DriverError as exc:
            raise DriverError(f"{t.label}: {exc}", permanent=True) from exc
    return sensors
