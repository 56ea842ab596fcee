"""drivers.ipmi: parsing of real ipmitool output, timeouts, the password file, and a real IPMI 2.0
session against Debian's ipmi_sim on loopback (no root, no lab: its chassis_control hook only
flips a state file; the lab's BMCs, whose hook really kills and boots a host, are tested in
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
from drivers.ipmi import BmcTarget, parse_power_status, power_off, power_on, power_status

# Captured from `ipmitool -I lanplus -C 3 ... chassis power ...` (ipmitool 1.8.19 against ipmi_sim,
# openipmi 2.0.33): stdout, exactly.
REAL_STATUS_ON = "Chassis Power is on\n"
REAL_STATUS_OFF = "Chassis Power is off\n"
REAL_OFF = "Chassis Power Control: Down/Off\n"
REAL_ON = "Chassis Power Control: Up/On\n"
REAL_BAD_PASSWORD_STDERR = "Error: Unable to establish IPMI v2 / RMCP+ session\n"

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


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[tuple[BmcTarget, Path, Path]]:
    """ipmi_sim on 127.0.0.1 with one admin user; yields (target, power state file, "ignore" flag)."""
    if shutil.which("ipmi_sim") is None or shutil.which("ipmitool") is None:
        pytest.skip("needs Debian's openipmi (ipmi_sim) and ipmitool")
    state, ignore = tmp_path / "power", tmp_path / "ignore-power-off"
    state.write_text("1\n")
    hook = tmp_path / "chassis-control"
    hook.write_text(HOOK.format(state=state, ignore=ignore))
    hook.chmod(0o755)
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
  chassis_control "{hook}"
  user 2 true "admin" "{PASSWORD}" admin 10 md5
""")
    (tmp_path / "sim.emu").write_text("mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 0x09 0x08 0x9f 0x1291 0xf02\n"
                                      "mc_enable 0x20\n")
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
        yield target, state, ignore
    finally:
        proc.terminate()
        proc.wait(timeout=10)


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
