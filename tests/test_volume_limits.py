"""The disk sizes the panel allows are the sizes a disk server's volume.sh accepts.

volume.sh runs here as the panel sends it (vblade-lib.sh, then the script, on `sh -s`), with its
directories moved under a temporary one: no host, no SSH."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from drivers import vblade
from drivers.errors import DriverError
from drivers.ssh import SSHTarget
from xenaoe_panel.env import env_int

REMOTE = vblade.REMOTE_DIR


def _volume_sh(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    dirs = f"\nEXPORTS_DIR={tmp_path}/exports PID_DIR={tmp_path}/run LOG_DIR={tmp_path}/log\n"
    script = (REMOTE / "vblade-lib.sh").read_text() + dirs + (REMOTE / "volume.sh").read_text()
    return subprocess.run(["sh", "-s", "--", *args], input=script, capture_output=True, text=True, timeout=30)


def _valid_number(value: int, maximum: int) -> bool:
    check = f'. {REMOTE / "vblade-lib.sh"} && valid_number "$1" "$2"'
    return subprocess.run(["sh", "-c", check, "sh", str(value), str(maximum)], timeout=10).returncode == 0


def test_a_disk_of_100000_mib_or_more_is_created(tmp_path):
    path = tmp_path / "vols" / "big-e1.0.img"
    result = _volume_sh(tmp_path, "create", str(path), "100000")
    assert result.returncode == 0, result.stderr
    assert path.stat().st_size == 100000 * 1024 * 1024 and path.stat().st_blocks < 64  # sparse


def test_the_panels_largest_disk_passes_the_scripts_check():
    assert settings.VM_MAX_DISK_MIB <= vblade.MAX_VOLUME_MIB
    assert _valid_number(settings.VM_MAX_DISK_MIB, vblade.MAX_VOLUME_MIB)
    assert _valid_number(vblade.MAX_VOLUME_MIB, vblade.MAX_VOLUME_MIB)
    assert not _valid_number(vblade.MAX_VOLUME_MIB + 1, vblade.MAX_VOLUME_MIB)
    assert not _valid_number(10 ** 30, vblade.MAX_VOLUME_MIB)  # never reaches the shell's arithmetic


def test_volume_sh_refuses_more_than_its_maximum_and_creates_nothing(tmp_path):
    path = tmp_path / "vols" / "huge.img"
    result = _volume_sh(tmp_path, "create", str(path), str(vblade.MAX_VOLUME_MIB + 1))
    assert result.returncode == vblade.EXIT_REFUSED and not path.exists()


def test_the_driver_refuses_more_than_the_scripts_maximum_before_calling_the_host(tmp_path):
    unreachable = SSHTarget(host="192.0.2.1", identity_file=tmp_path / "id", known_hosts_file=tmp_path / "kh",
                            control_dir=tmp_path / "c")
    with pytest.raises(DriverError) as err:
        vblade.create_volume(unreachable, "/srv/v.img", vblade.MAX_VOLUME_MIB + 1)
    assert err.value.permanent and "at most" in str(err.value)


def test_a_maximum_disk_size_above_the_scripts_is_a_configuration_error(monkeypatch):
    monkeypatch.setitem(os.environ, "XENAOE_TEST_SIZE", str(vblade.MAX_VOLUME_MIB + 1))
    with pytest.raises(ImproperlyConfigured):
        env_int("XENAOE_TEST_SIZE", 1, minimum=1, maximum=vblade.MAX_VOLUME_MIB)
    assert env_int("XENAOE_TEST_SIZE", 1, maximum=vblade.MAX_VOLUME_MIB + 1) == vblade.MAX_VOLUME_MIB + 1
