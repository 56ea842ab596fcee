"""drivers.migration.migrate: progress parsed from captured real job statistics, failures against
libvirt's test driver (which cannot migrate), and, on the lab's cpu1 and cpu2, the paths the
integration tests do not take: a failing progress callback and the timeout both abort the
migration and leave the guest running on the source.
"""
from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from drivers import hypervisor as hv
from drivers import migration as mg
from drivers.errors import DriverError

TEST_URI = "test:///default"

# virDomainGetJobStats as libvirt 9.0 / QEMU 7.2 reported it in the lab: a 64 MiB guest dirtying
# 8 MiB/s, migrated at 16 MiB/s from cpu1 to cpu2.
SETUP = {"operation": 5, "time_elapsed": 403, "data_total": 0, "data_processed": 0, "data_remaining": 0,
         "memory_total": 0, "memory_processed": 0, "memory_remaining": 0, "memory_dirty_rate": 0,
         "memory_iteration": 0, "memory_postcopy_requests": 0, "type": 2}
FIRST_PASS = {"operation": 5, "time_elapsed": 905, "downtime": 300, "data_total": 67641344,
              "data_processed": 6714372, "data_remaining": 58990592, "memory_total": 67641344,
              "memory_processed": 6714372, "memory_remaining": 58990592, "memory_bps": 16785540,
              "memory_constant": 477, "memory_normal": 1635, "memory_normal_bytes": 6696960, "memory_dirty_rate": 0,
              "memory_iteration": 1, "memory_postcopy_requests": 0, "memory_page_size": 4096, "type": 2}
SECOND_PASS = {"operation": 5, "time_elapsed": 3916, "downtime": 300, "data_total": 67641344,
               "data_processed": 57070784, "data_remaining": 26460160, "memory_total": 67641344,
               "memory_processed": 57070784, "memory_remaining": 26460160, "memory_bps": 16785540,
               "memory_constant": 2757, "memory_normal": 13900, "memory_normal_bytes": 56934400,
               "memory_dirty_rate": 1998, "memory_iteration": 2, "memory_postcopy_requests": 0,
               "memory_page_size": 4096, "type": 2}
# The target's VIR_DOMAIN_JOB_STATS_COMPLETED after the migration (the source had forgotten it).
COMPLETED = {"operation": 4, "time_elapsed": 6682, "time_elapsed_net": 6681, "downtime": 13, "downtime_net": 12,
             "setup_time": 1, "data_total": 67641344, "data_processed": 107033096, "data_remaining": 0,
             "memory_total": 67641344, "memory_processed": 107033096, "memory_remaining": 0,
             "memory_bps": 17532477, "memory_constant": 2757, "memory_normal": 26074,
             "memory_normal_bytes": 106799104, "memory_dirty_rate": 0, "memory_iteration": 8,
             "memory_postcopy_requests": 0, "memory_page_size": 4096, "disk_total": 0, "disk_processed": 0,
             "disk_remaining": 0, "type": 3}
RUNNING = (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_BOOTED)


def test_progress_of_the_first_pass():
    p = mg.progress_from_stats(FIRST_PASS, RUNNING, 1.0)
    assert (p.phase, p.iteration, p.percent) == ("copying", 1, 12.8)
    assert (p.memory_total, p.memory_processed, p.memory_remaining) == (67641344, 6714372, 58990592)
    assert p.bytes_per_second == 16785540 and p.dirty_bytes_per_second == 0
    assert p.eta_seconds == 3.5 and p.expected_downtime_ms == 300 and p.downtime_ms is None


def test_progress_of_a_later_pass_counts_the_guest_dirtying_pages_in_the_estimate():
    p = mg.progress_from_stats(SECOND_PASS, RUNNING, 4.0)
    assert (p.phase, p.iteration) == ("iterating", 2)
    assert p.dirty_bytes_per_second == 1998 * 4096
    assert p.eta_seconds == round(26460160 / (16785540 - 1998 * 4096), 1)


def test_no_estimate_while_setting_up_or_while_the_guest_dirties_faster_than_the_copy():
    assert mg.progress_from_stats(SETUP, RUNNING, 0.5).phase == "starting"
    assert mg.progress_from_stats(SETUP, RUNNING, 0.5).eta_seconds is None
    flooding = SECOND_PASS | {"memory_dirty_rate": 5000}
    assert mg.progress_from_stats(flooding, RUNNING, 4.0).eta_seconds is None


def test_progress_while_paused_for_the_switch_over():
    paused = (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_MIGRATION)
    assert mg.progress_from_stats(SECOND_PASS, paused, 6.5).phase == "switchover"


def test_completed_statistics_give_the_downtime_and_everything_sent():
    p = mg.progress_from_stats(COMPLETED, None, 8.0)
    assert (p.phase, p.percent, p.memory_remaining, p.eta_seconds) == ("completed", 100.0, 0, 0.0)
    assert p.downtime_ms == 13 and p.expected_downtime_ms is None
    assert p.memory_processed == 107033096 > p.memory_total  # pages dirtied during the copy went twice
    assert p.as_dict()["percent"] == 100.0 and p.as_dict()["downtime_ms"] == 13


# ---- failures on libvirt's test driver (in-process, cannot migrate) -----------------------------


@pytest.fixture(scope="module")
def keeper() -> Iterator[libvirt.virConnect]:
    conn = libvirt.open(TEST_URI)  # keeps test:///default's state alive between the driver's calls
    yield conn
    conn.close()


def test_a_hypervisor_that_cannot_migrate_fails_permanently_and_the_guest_stays(keeper):
    seen = []
    with pytest.raises(DriverError) as err:
        mg.migrate(TEST_URI, TEST_URI, "test", migration_uri=TEST_URI, hypervisor="kvm", on_progress=seen.append,
                   poll_interval=0.05)
    assert err.value.permanent and "migrate 'test'" in str(err.value)
    assert not isinstance(err.value, mg.MigrationAborted)
    assert keeper.lookupByName("test").state()[0] == libvirt.VIR_DOMAIN_RUNNING


def test_an_unknown_domain_or_a_bad_cap_fails_before_anything_starts(keeper):
    with pytest.raises(DriverError, match="no domain named 'ghost'") as err:
        mg.migrate(TEST_URI, TEST_URI, "ghost", migration_uri=TEST_URI, hypervisor="kvm")
    assert err.value.permanent
    with pytest.raises(DriverError, match="bandwidth cap must be >= 1 MiB/s") as err:
        mg.migrate(TEST_URI, TEST_URI, "test", migration_uri=TEST_URI, hypervisor="kvm", max_bandwidth_mib=0)
    assert err.value.permanent


def test_host_info_says_which_hypervisor_answers(keeper):
    info = hv.host_info(TEST_URI)
    assert info.hypervisor == "TEST" and info.free_memory_bytes > 0 and info.cpus > 0


# ---- the lab: a disk-less busy guest between cpu1 and cpu2 ---------------------------------------


@pytest.fixture
def lab_guest(lab_cluster) -> Iterator[tuple[str, str, str]]:
    """(source URI, target URI, domain name): a 64 MiB busy guest without disks running on cpu1."""
    from django.conf import settings

    from lab.guests import busy
    from lab.topology import host

    source, target = host("cpu1").libvirt_uri, host("cpu2").libvirt_uri
    name = f"xat-migrate-{uuid.uuid4().hex[:6]}"
    kernel = busy.install_busy_kernel(Path(settings.LAB_DIR) / "guests", 8)
    xml = (f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>"
           f"<os><type arch='x86_64'>hvm</type><kernel>{kernel}</kernel></os><on_crash>destroy</on_crash>"
           "<devices><serial type='pty'><target port='0'/></serial></devices></domain>")
    hv.define(source, xml)
    hv.start(source, name)
    yield source, target, name
    for uri in (source, target):
        hv.destroy(uri, name)
        hv.undefine(uri, name)


def _only_on(uri: str, other: str, name: str) -> bool:
    here = hv.domain_info(uri, name)
    return here is not None and here.state == "running" and here.persistent and hv.domain_info(other, name) is None


@pytest.mark.lab
def test_a_failing_progress_callback_aborts_the_migration(lab_guest):
    source, target, name = lab_guest
    seen = []

    def on_progress(progress: mg.MigrationProgress) -> None:
        seen.append(progress)
        if progress.memory_processed:
            raise RuntimeError("the job log is gone")

    with pytest.raises(RuntimeError, match="the job log is gone"):
        mg.migrate(source, target, name, migration_uri="qemu+ssh://root@10.213.0.22/system", hypervisor="qemu",
                   max_bandwidth_mib=2, on_progress=on_progress)
    assert seen[-1].phase == "copying"
    assert _only_on(source, target, name)


@pytest.mark.lab
def test_a_migration_over_its_time_limit_is_aborted_and_the_guest_stays(lab_guest):
    source, target, name = lab_guest
    started = time.monotonic()
    with pytest.raises(DriverError, match="did not finish within 1 s; aborted") as err:
        mg.migrate(source, target, name, migration_uri="qemu+ssh://root@10.213.0.22/system", hypervisor="qemu",
                   max_bandwidth_mib=2, timeout=1)
    assert not isinstance(err.value, mg.MigrationAborted)
    assert time.monotonic() - started < 15
    assert _only_on(source, target, name)
