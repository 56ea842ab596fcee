"""drivers.ipmi: parsing of real ipmitool output (power and sensors), timeouts, the password file,
and a real IPMI 2.0 session against Debian's ipmi_sim on loopback (no root, no lab: its
chassis_control hook only flips a state file; the sensors are the lab's emulation, failed and
restored on its console; the lab's BMCs, whose hook really kills and boots a host, are tested in
tests/lab/test_lab_bmc.py)."""
from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers import ipmi
from drivers.errors import DriverError
from drivers.ipmi import (
    ABSENT,
    FAILED,
    FAN,
    OK,
    POWER_SUPPLY,
    BmcTarget,
    Sensor,
    parse_power_status,
    parse_sdr_type,
    power_off,
    power_on,
    power_status,
    read_sensors,
)

# Captured from `ipmitool -I lanplus -C 3 ... chassis power ...` (ipmitool 1.8.19 against ipmi_sim,
# openipmi 2.0.33): stdout, exactly.
REAL_STATUS_ON = "Chassis Power is on\n"
REAL_STATUS_OFF = "Chassis Power is off\n"
REAL_OFF = "Chassis Power Control: Down/Off\n"
REAL_ON = "Chassis Power Control: Up/On\n"
REAL_BAD_PASSWORD_STDERR = "Error: Unable to establish IPMI v2 / RMCP+ session\n"
# `ipmitool -I lanplus -C 3 ... sdr type "Power Supply"` / `sdr type Fan`, captured from the lab's
# BMC emulation (lab/bmc.py: two supplies, two fans) well, after `psu-fail` and after `fan-fail`,
# and after setting the other power supply states by hand on ipmi_sim's console.
REAL_PSU_WELL = ("PS1 Status       | 60h | ok  | 10.1 | Presence detected\n"
                 "PS2 Status       | 61h | ok  | 10.2 | Presence detected\n")
REAL_PSU_FAILED = ("PS1 Status       | 60h | ok  | 10.1 | Presence detected, Failure detected\n"
                   "PS2 Status       | 61h | ok  | 10.2 | Presence detected\n")
REAL_FANS_WELL = "Fan1             | 70h | ok  | 29.1 | 5400 RPM\nFan2             | 71h | ok  | 29.2 | 5400 RPM\n"
REAL_FAN_FAILED = "Fan1             | 70h | lnr | 29.1 | 0 RPM\nFan2             | 71h | ok  | 29.2 | 5400 RPM\n"
REAL_PSU_STATES = {
    "PS1 Status       | 30h | ok  | 10.1 | Presence detected, Power Supply AC lost\n": FAILED,
    "PS1 Status       | 30h | ok  | 10.1 | Presence detected, Predictive failure\n": FAILED,
    "PS1 Status       | 30h | ok  | 10.1 | Failure detected\n": FAILED,  # presence bit cleared, failure set
    "PS1 Status       | 30h | ok  | 10.1 | Presence detected, AC lost or out-of-range, AC out-of-range, but present, "
    "Config Error\n": FAILED,
    "PS1 Status       | 30h | ok  | 10.1 | \n": ABSENT,  # no state asserted: an empty bay
    "PS1 Status       | 30h | ns  | 10.1 | Disabled\n": ABSENT,  # sensor not scanning
}
REAL_FAN_STATES = {"Fan1             | 40h | lcr | 29.1 | 800 RPM\n": FAILED,
                   "Fan1             | 40h | lnr | 29.1 | 300 RPM\n": FAILED,
                   "Fan1             | 40h | lnc | 29.1 | 1200 RPM\n": OK}  # non-critical: a warning
# Written in ipmitool's format as real servers print it (a Dell-style board with a redundancy
# sensor, a Supermicro-style one with unpopulated fan headers and an upper-critical fan).
DELL_PSU = """PS1 Status       | 63h | ok  | 10.1 | Presence detected
PS2 Status       | 64h | ok  | 10.2 | Presence detected, Power Supply AC lost
PS Redundancy    | 65h | ok  |  7.1 | Redundancy Lost
"""
SUPERMICRO_FANS = """FAN1             | 41h | ok  | 29.1 | 4200 RPM
FAN2             | 42h | ucr | 29.2 | 25800 RPM
FAN3             | 43h | ns  | 29.3 | No Reading
FAN4             | 44h | cr  | 29.4 | 0 RPM
Fan Redundancy   | 0Ch | ok  |  7.1 | Fully Redundant
"""

PASSWORD = "pw-" + "x7Kq2mZ9"
HOOK = """#!/bin/sh
# ipmi_sim chassis_control for the test: power is a file; {ignore} makes "set power 0" a no-op.
state={state}
op=$1; shift
case $op in
  get) for p in "$@"; do
         case $p in power) echo "power:$(cat $state)";; boot) echo "boot:default";; esac
       done;;
  set) while [ $# -ge 2 ]; do
         if [ "$1" = power ] && [ ! -e {ignore} ]; then echo "$2" > $state; fi
         shift 2
       done;;
  *) exit 1;;
esac
"""


def test_parses_the_real_status_output():
    assert parse_power_status(REAL_STATUS_ON) == "on"
    assert parse_power_status(REAL_STATUS_OFF) == "off"
    assert parse_power_status(REAL_STATUS_OFF.rstrip("\n")) == "off"


@pytest.mark.parametrize("output", [
    "", "Chassis Power is unknown\n", "chassis power is off\n", "Chassis Power is off\nChassis Power is on\n",
    "Error: Chassis Power is off\n", REAL_OFF, " Chassis Power is off\n",
])
def test_anything_else_is_not_a_power_state(output):
    with pytest.raises(DriverError) as info:
        parse_power_status(output)
    assert info.value.permanent


def test_parses_the_lab_bmcs_sensors_well_and_failed():
    assert parse_sdr_type(REAL_PSU_WELL, POWER_SUPPLY) == [
        Sensor("PS1 Status", POWER_SUPPLY, OK, "Presence detected", "ok"),
        Sensor("PS2 Status", POWER_SUPPLY, OK, "Presence detected", "ok")]
    assert [s.status for s in parse_sdr_type(REAL_FANS_WELL, FAN)] == [OK, OK]
    failed = parse_sdr_type(REAL_PSU_FAILED, POWER_SUPPLY)
    assert [(s.name, s.failing) for s in failed] == [("PS1 Status", True), ("PS2 Status", False)]
    assert failed[0].describe() == "power supply PS1 Status failed (Presence detected, Failure detected)"
    fan = parse_sdr_type(REAL_FAN_FAILED, FAN)[0]
    assert (fan.name, fan.status, fan.code, fan.reading) == ("Fan1", FAILED, "lnr", "0 RPM")
    assert fan.describe() == "fan Fan1 failed (lnr, 0 RPM)"


@pytest.mark.parametrize(("output", "status"), [*REAL_PSU_STATES.items()])
def test_power_supply_states(output, status):
    assert [s.status for s in parse_sdr_type(output, POWER_SUPPLY)] == [status]


@pytest.mark.parametrize(("output", "status"), [*REAL_FAN_STATES.items()])
def test_fan_states(output, status):
    assert [s.status for s in parse_sdr_type(output, FAN)] == [status]


def test_parses_real_servers_output():
    psus = parse_sdr_type(DELL_PSU, POWER_SUPPLY)
    assert [(s.name, s.status) for s in psus] == [("PS1 Status", OK), ("PS2 Status", FAILED), ("PS Redundancy", OK)]
    assert psus[1].reading == "Presence detected, Power Supply AC lost"
    fans = parse_sdr_type(SUPERMICRO_FANS, FAN)
    assert [(s.name, s.status, s.code) for s in fans] == [
        ("FAN1", OK, "ok"), ("FAN2", FAILED, "ucr"), ("FAN3", ABSENT, "ns"), ("FAN4", FAILED, "cr"),
        ("Fan Redundancy", OK, "ok")]
    assert parse_sdr_type("", FAN) == []  # a board without fan sensors


@pytest.mark.parametrize("output", [
    "PS1 Status       | 0x01              | ok\n",  # `sdr list`, not the extended format asked for
    "Error: Unable to establish IPMI v2 / RMCP+ session\n",
    "Fan1 | 70h | ok | 29.1\n",
])
def test_anything_else_is_not_a_sensor_line(output):
    with pytest.raises(DriverError, match="unexpected `sdr type") as info:
        parse_sdr_type(output, POWER_SUPPLY)
    assert info.value.permanent


def test_the_password_is_never_on_the_command_line(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text(PASSWORD + "\n")
    argv = ipmi._argv(BmcTarget("10.0.0.9", 623, "admin", secret), ["chassis", "power", "status"])
    assert PASSWORD not in " ".join(argv)
    assert argv[argv.index("-f") + 1] == str(secret)
    assert "-P" not in argv and "-E" not in argv


def test_a_missing_password_file_fails_at_once_without_prompting(tmp_path):
    started = time.monotonic()
    with pytest.raises(DriverError, match="password file") as info:
        power_status(BmcTarget("127.0.0.1", 9, "admin", tmp_path / "missing", timeout=5))
    assert info.value.permanent
    assert time.monotonic() - started < 1


def test_a_silent_bmc_times_out_as_a_transient_error(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text(PASSWORD + "\n")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # takes packets, never answers
        silent.bind(("127.0.0.1", 0))
        target = BmcTarget("127.0.0.1", silent.getsockname()[1], "admin", secret, timeout=1.5)
        started = time.monotonic()
        with pytest.raises(DriverError, match="timed out after 1.5 s") as info:
            power_status(target)
    assert not info.value.permanent
    assert time.monotonic() - started < 3


def test_unexpected_output_of_a_power_command_is_an_error(tmp_path, monkeypatch):
    fake = tmp_path / "ipmitool"
    fake.write_text("#!/bin/sh\necho 'Chassis Power Control: Up/On'\n")  # answers "on" to anything
    fake.chmod(0o755)
    monkeypatch.setattr(ipmi, "IPMITOOL", str(fake))
    secret = tmp_path / "pw"
    secret.write_text(PASSWORD + "\n")
    target = BmcTarget("127.0.0.1", 623, "admin", secret)
    with pytest.raises(DriverError, match="unexpected `chassis power off` output"):
        power_off(target, confirm_timeout=1)
    with pytest.raises(DriverError, match="unexpected `chassis power status` output"):
        power_status(target)


# --- against a real ipmi_sim ---------------------------------------------------------------------

def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_sim(tmp_path: Path, emulation: str, extra_conf: str = "") -> Iterator[tuple[BmcTarget, int]]:
    """ipmi_sim on 127.0.0.1 with one admin user and the given emulation; yields (target, port)."""
    if shutil.which("ipmi_sim") is None or shutil.which("ipmitool") is None:
        pytest.skip("needs Debian's openipmi (ipmi_sim) and ipmitool")
    port = _free_udp_port()
    (tmp_path / "sim-state").mkdir()
    (tmp_path / "lan.conf").write_text(f"""name "xat-bmc"
set_working_mc 0x20
  startlan 1
    addr 127.0.0.1 {port}
    priv_limit admin
    allowed_auths_admin md5
    guid 0123456789abcdef0123456789abcdef
  endlan
{extra_conf}  user 2 true "admin" "{PASSWORD}" admin 10 md5
""")
    (tmp_path / "sim.emu").write_text(emulation)
    secret = tmp_path / "pw"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o600)
    with (tmp_path / "sim.log").open("w") as log:
        proc = subprocess.Popen(["ipmi_sim", "-n", "-c", str(tmp_path / "lan.conf"), "-f", str(tmp_path / "sim.emu"),
                                 "-s", str(tmp_path / "sim-state")], stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT)
    target = BmcTarget("127.0.0.1", port, "admin", secret, timeout=10)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                power_status(target)
                break
            except DriverError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)
        yield target, port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[tuple[BmcTarget, Path, Path]]:
    """ipmi_sim with chassis power only; yields (target, power state file, "ignore" flag)."""
    state, ignore = tmp_path / "power", tmp_path / "ignore-power-off"
    state.write_text("1\n")
    hook = tmp_path / "chassis-control"
    hook.write_text(HOOK.format(state=state, ignore=ignore))
    hook.chmod(0o755)
    emulation = "mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 0x09 0x08 0x9f 0x1291 0xf02\nmc_enable 0x20\n"
    for target, _port in _run_sim(tmp_path, emulation, f'  chassis_control "{hook}"\n'):
        yield target, state, ignore


def test_power_status_off_and_on_through_a_real_bmc(sim):
    target, state, _ = sim
    assert power_status(target) == "on"
    started = time.monotonic()
    power_off(target, confirm_timeout=10)
    assert time.monotonic() - started < 2
    assert state.read_text().strip() == "0"
    assert power_status(target) == "off"
    power_on(target)
    assert power_status(target) == "on"


def test_power_off_that_never_shows_fails_instead_of_confirming(sim):
    target, state, ignore = sim
    ignore.touch()  # the BMC acknowledges "power off", but the host stays on
    started = time.monotonic()
    with pytest.raises(DriverError, match="not confirmed within 1.5 s.*still on") as info:
        power_off(target, confirm_timeout=1.5)
    assert not info.value.permanent
    assert 1.5 <= time.monotonic() - started < 5
    assert state.read_text().strip() == "1"


def test_a_wrong_password_is_refused(sim, tmp_path):
    target, _, _ = sim
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password\n")
    with pytest.raises(DriverError, match="RMCP\\+ session"):
        power_status(BmcTarget(target.address, target.port, target.user, wrong, timeout=10))


@pytest.fixture
def sensor_sim(tmp_path: Path) -> Iterator[tuple[BmcTarget, int]]:
    """ipmi_sim with the lab's BMC emulation (power supplies and fans, lab/bmc.py) and its console
    on loopback; yields (target, console port)."""
    from lab import bmc

    if shutil.which("sdrcomp") is None:
        pytest.skip("needs Debian's openipmi (sdrcomp)")
    console = _free_tcp_port()
    for target, _port in _run_sim(tmp_path, bmc.emulation(), f"  console 127.0.0.1 {console}\n"):
        yield target, console


def _free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_sensors_of_a_real_bmc_read_well_then_failed_then_well(sensor_sim):
    from lab.bmc import DRILLS
    from lab.bmc_hook import send_console

    target, console = sensor_sim
    assert ipmi._ipmitool(target, ["sdr", "type", "Power Supply"]) == REAL_PSU_WELL
    assert ipmi._ipmitool(target, ["sdr", "type", "Fan"]) == REAL_FANS_WELL
    started = time.monotonic()
    sensors = read_sensors(target)
    took = time.monotonic() - started
    assert [(s.kind, s.name, s.status) for s in sensors] == [
        (POWER_SUPPLY, "PS1 Status", OK), (POWER_SUPPLY, "PS2 Status", OK), (FAN, "Fan1", OK), (FAN, "Fan2", OK)]

    send_console("127.0.0.1", console, DRILLS["psu-fail"])
    assert ipmi._ipmitool(target, ["sdr", "type", "Power Supply"]) == REAL_PSU_FAILED
    assert [s.describe() for s in read_sensors(target) if s.failing] == [
        "power supply PS1 Status failed (Presence detected, Failure detected)"]
    send_console("127.0.0.1", console, DRILLS["fan-fail"])
    assert ipmi._ipmitool(target, ["sdr", "type", "Fan"]) == REAL_FAN_FAILED
    assert [s.name for s in read_sensors(target) if s.failing] == ["PS1 Status", "Fan1"]
    send_console("127.0.0.1", console, DRILLS["psu-ok"] + DRILLS["fan-ok"])
    assert [s for s in read_sensors(target) if s.status != OK] == []
    with pytest.raises(RuntimeError, match="refused 'no_such_command 1': Unknown command"):
        send_console("127.0.0.1", console, ["no_such_command 1"])
    print(f"\nread_sensors (two ipmitool calls) took {took * 1000:.0f} ms")


def test_a_silent_bmcs_sensors_are_an_error_not_a_reading(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text(PASSWORD + "\n")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        with pytest.raises(DriverError, match="`ipmitool sdr type Power Supply` timed out after 1.5 s") as info:
            read_sensors(BmcTarget("127.0.0.1", silent.getsockname()[1], "admin", secret, timeout=1.5))
    assert not info.value.permanent
