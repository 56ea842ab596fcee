"""drivers.vblade on a disk server reached over drivers.ssh: volumes, exports, persistence, restore.

Every test runs on the throw-away xat- hosts ("local") and on the lab's disk1 ("lab", skipped
unless the lab is up); see conftest.py.
"""
from __future__ import annotations

import time
from dataclasses import replace

import pytest
from conftest import REPO, TEST_SHELF, Site

from drivers import aoe, vblade
from drivers.errors import DriverError
from drivers.vblade import ExportSpec

SIZE_MIB = 64
SECTORS = SIZE_MIB * 1024 * 1024 // 512


def volume(site: Site, name: str = "leg.img") -> str:
    return f"{site.volume_dir}/{name}"


def exported(site: Site, slot: int = 0, name: str = "leg.img", **kwargs) -> vblade.RunningExport:
    vblade.create_volume(site.disk, volume(site, name), SIZE_MIB)
    return vblade.start_export(site.disk, ExportSpec(site.shelf, slot, site.disk_interface, volume(site, name)),
                               **kwargs)


def is_our_vblade(site: Site, export: vblade.RunningExport) -> bool:
    argv = site.disk_run(["cat", f"/proc/{export.pid}/cmdline"]).stdout.split("\0")[:-1]
    return argv[-4:] == [str(export.shelf), str(export.slot), export.interface, export.path] and \
        argv[0].endswith("vblade")


def refused(call, *args, **kwargs) -> DriverError:
    with pytest.raises(DriverError) as caught:
        call(*args, **kwargs)
    assert caught.value.permanent, caught.value
    return caught.value


# ---- volumes ----------------------------------------------------------------------------------------


def test_create_volume_makes_a_sparse_file_in_a_new_directory(site):
    path = volume(site, "sub/dir/v.img")
    vblade.create_volume(site.disk, path, SIZE_MIB)
    size, blocks = site.disk_run(["stat", "-c", "%s %b", path]).stdout.split()
    assert int(size) == SIZE_MIB * 1024 * 1024
    assert int(blocks) < 64  # sparse: nothing allocated


def test_create_volume_of_100000_mib_and_more(site):
    """Sizes of six digits and more (the panel allows up to 16 TiB by default) reach the host."""
    path = volume(site, "big.img")
    vblade.create_volume(site.disk, path, 100_000)
    assert int(site.disk_run(["stat", "-c", "%s", path]).stdout) == 100_000 * 1024 * 1024
    vblade.remove_volume(site.disk, path)


def test_create_volume_never_overwrites(site):
    path = volume(site)
    vblade.create_volume(site.disk, path, SIZE_MIB)
    site.disk_run(["sh", "-c", 'printf data > "$1"', "sh", path])
    assert "already exists" in str(refused(vblade.create_volume, site.disk, path, SIZE_MIB))
    assert site.disk_run(["cat", path]).stdout == "data"


def test_remove_volume_is_idempotent(site):
    path = volume(site)
    vblade.create_volume(site.disk, path, SIZE_MIB)
    vblade.remove_volume(site.disk, path)
    vblade.remove_volume(site.disk, path)
    assert site.disk_run(["test", "-e", path]).returncode == 1


def test_remove_volume_refuses_an_exported_file_and_directories(site):
    export = exported(site)
    assert "still exported as" in str(refused(vblade.remove_volume, site.disk, export.path))
    assert "not a regular file" in str(refused(vblade.remove_volume, site.disk, site.volume_dir))
    vblade.stop_export(site.disk, export.shelf, export.slot)
    vblade.remove_volume(site.disk, export.path)


@pytest.mark.parametrize("path", ["relative/x.img", "/srv/../etc/passwd", "/srv/a\nb", "/", "/srv//x"])
def test_bad_paths_are_refused_before_reaching_the_host(site, path):
    refused(vblade.create_volume, site.disk, path, 1)


# ---- exports ------------------------------------------------------------------------------------


def test_start_export_serves_the_file_and_lists_it(site):
    export = exported(site, slot=1)
    assert (export.shelf, export.slot, export.interface, export.path, export.macs) == (
        site.shelf, 1, site.disk_interface, volume(site), ())
    assert is_our_vblade(site, export)
    assert export in vblade.list_exports(site.disk)
    log = site.disk_run(["cat", f"/var/log/xenaoe/vblade-e{site.shelf}.1.log"]).stdout
    assert f"pid {export.pid}: e{site.shelf}.1, {SECTORS} sectors" in log


def test_start_export_is_idempotent(site):
    first = exported(site)
    again = vblade.start_export(site.disk, ExportSpec(site.shelf, 0, site.disk_interface, first.path))
    assert again == first  # same process, not restarted


def test_a_shelf_slot_serving_another_file_is_refused(site):
    exported(site)
    vblade.create_volume(site.disk, volume(site, "other.img"), SIZE_MIB)
    error = refused(vblade.start_export, site.disk,
                    ExportSpec(site.shelf, 0, site.disk_interface, volume(site, "other.img")))
    assert "already served from" in str(error)


def test_one_file_under_two_addresses_is_refused(site):
    export = exported(site)
    error = refused(vblade.start_export, site.disk, ExportSpec(site.shelf, 1, site.disk_interface, export.path))
    assert f"already exported as e{site.shelf}.0" in str(error)
    assert [e.slot for e in vblade.list_exports(site.disk) if e.shelf == site.shelf] == [0]


def test_a_missing_backing_file_is_refused_and_leaves_nothing(site):
    spec = ExportSpec(site.shelf, 2, site.disk_interface, volume(site, "absent.img"))
    assert "does not exist" in str(refused(vblade.start_export, site.disk, spec))
    assert site.disk_run(["test", "-e", f"/etc/xenaoe/exports/e{site.shelf}.2.conf"]).returncode == 1


def test_a_bad_interface_is_refused_and_leaves_nothing(site):
    vblade.create_volume(site.disk, volume(site), SIZE_MIB)
    spec = ExportSpec(site.shelf, 2, "xatnosuch0", volume(site))
    assert "did not start" in str(refused(vblade.start_export, site.disk, spec))
    assert site.disk_run(["test", "-e", f"/etc/xenaoe/exports/e{site.shelf}.2.conf"]).returncode == 1
    assert ours(vblade.list_exports(site.disk)) == []


def test_changing_the_acl_restarts_vblade_with_the_new_list(site):
    open_export = exported(site)
    fenced = vblade.start_export(site.disk, ExportSpec(site.shelf, 0, site.disk_interface, open_export.path),
                                 allowed_macs=["02:7A:00:00:00:99", site.cpu_mac.upper()])
    assert fenced.pid != open_export.pid
    assert fenced.macs == tuple(sorted(["02:7a:00:00:00:99", site.cpu_mac]))
    assert not alive(site, open_export.pid)
    assert ours(vblade.list_exports(site.disk)) == [fenced]
    conf = site.disk_run(["cat", f"/etc/xenaoe/exports/e{site.shelf}.0.conf"]).stdout
    assert f"macs={','.join(fenced.macs)}\n" in conf


def test_acl_decides_who_sees_the_export_on_the_wire(site):
    spec_path = exported(site, allowed_macs=["02:7a:00:00:00:99"]).path
    assert _probe(site) == []
    vblade.start_export(site.disk, ExportSpec(site.shelf, 0, site.disk_interface, spec_path),
                        allowed_macs=[site.cpu_mac])
    answers = _probe(site)
    assert [(a.slot, a.mac, a.sectors) for a in answers] == [(0, site.disk_mac, SECTORS)]


@pytest.mark.parametrize("macs, why", [([], "empty MAC list"), (["02:00:00:00:00"], "not MAC"),
                                        ("02:00:00:00:00:01", "not a string"),
                                        ([f"02:00:00:00:00:{i:02x}" for i in range(33)], "at most 32")])
def test_bad_acls_are_refused(site, macs, why):
    vblade.create_volume(site.disk, volume(site), SIZE_MIB)
    error = refused(vblade.start_export, site.disk, ExportSpec(site.shelf, 0, site.disk_interface, volume(site)),
                    allowed_macs=macs)
    assert why in str(error)


def test_stop_export_is_idempotent_and_forgets_the_export(site):
    restore_is_safe(site)
    export = exported(site)
    vblade.stop_export(site.disk, export.shelf, export.slot)
    vblade.stop_export(site.disk, export.shelf, export.slot)
    assert export not in vblade.list_exports(site.disk)
    assert not alive(site, export.pid)
    assert site.disk_run(["test", "-e", f"/etc/xenaoe/exports/e{export.shelf}.0.conf"]).returncode == 1
    assert ours(vblade.restore_exports(site.disk)) == []  # nothing comes back at boot


def test_list_ignores_vblades_it_did_not_start_and_stale_pid_files(site):
    mine = exported(site)
    vblade.create_volume(site.disk, volume(site, "foreign.img"), SIZE_MIB)
    # A vblade somebody else started, and a pid file pointing at a process that is not a vblade.
    foreign = site.disk_run(["sh", "-c", 'setsid vblade "$1" 5 "$2" "$3" </dev/null >/dev/null 2>&1 & echo $!',
                             "sh", str(site.shelf), site.disk_interface, volume(site, "foreign.img")])
    sleeper = site.disk_run(["sh", "-c", "setsid sleep 60 </dev/null >/dev/null 2>&1 & echo $!"])
    try:
        site.disk_run(["sh", "-c", f'echo {sleeper.stdout.strip()} > /run/xenaoe/vblade/e{site.shelf}.6.pid'])
        assert ours(vblade.list_exports(site.disk)) == [mine]
    finally:
        site.disk_run(["kill", foreign.stdout.strip(), sleeper.stdout.strip()])
        site.disk_run(["rm", "-f", f"/run/xenaoe/vblade/e{site.shelf}.6.pid"])


def test_a_dead_vblade_is_not_listed_and_restore_brings_it_back(site):
    restore_is_safe(site)
    export = exported(site, slot=3, allowed_macs=[site.cpu_mac])
    kill(site, export.pid)
    assert ours(vblade.list_exports(site.disk)) == []

    restored = ours(vblade.restore_exports(site.disk))
    assert len(restored) == 1 and restored[0].pid != export.pid
    assert restored[0] == vblade.RunningExport(export.shelf, 3, export.interface, export.path, restored[0].pid,
                                               (site.cpu_mac,))
    assert ours(vblade.list_exports(site.disk)) == restored
    assert ours(vblade.restore_exports(site.disk)) == []  # already running


def test_a_read_only_export_stays_read_only_through_an_acl_change_and_a_restore(site):
    """An ISO shared by many guests is served with vblade -r; a fence restarting it with another MAC
    list (from what the list says) and a restore after a crash must keep it read-only."""
    restore_is_safe(site)
    vblade.create_volume(site.disk, volume(site, "cd.iso"), SIZE_MIB)
    spec = ExportSpec(site.shelf, 5, site.disk_interface, volume(site, "cd.iso"), read_only=True)
    export = vblade.start_export(site.disk, spec)
    assert export.read_only and export.spec == spec
    assert "-r" in site.disk_run(["cat", f"/proc/{export.pid}/cmdline"]).stdout.split("\0")

    fenced = vblade.start_export(site.disk, export.spec, allowed_macs=[site.cpu_mac])
    assert (fenced.read_only, fenced.macs) == (True, (site.cpu_mac,)) and fenced.pid != export.pid
    assert vblade.start_export(site.disk, fenced.spec, allowed_macs=[site.cpu_mac]).pid == fenced.pid

    kill(site, fenced.pid)
    [restored] = ours(vblade.restore_exports(site.disk))
    assert restored.read_only and restored.macs == (site.cpu_mac,) and is_our_vblade(site, restored)
    # Read-write again on request: a changed mode restarts it.
    writable = vblade.start_export(site.disk, replace(spec, read_only=False), allowed_macs=[site.cpu_mac])
    assert not writable.read_only and writable.pid != restored.pid


def test_restore_works_when_run_directly_on_the_host_after_a_reboot(site):
    restore_is_safe(site)
    export = exported(site, slot=4)
    # As after a reboot: the process and its pid file are gone, the config in /etc/xenaoe stays.
    # (Only our own pid file: on the lab's disk1 others belong to the panel's exports.)
    kill(site, export.pid)
    site.disk_run(["rm", "-f", f"/run/xenaoe/vblade/e{site.shelf}.4.pid"])
    script = REPO / "drivers" / "remote" / "restore-exports.sh"  # as the lab and the systemd unit run it
    result = site.disk_run(["sh", str(script)], timeout=30)
    assert result.returncode == 0, result.stderr
    assert f"{site.shelf}\t4\t{site.disk_interface}\t{export.path}\t" in result.stdout
    [running] = ours(vblade.list_exports(site.disk))
    assert (running.slot, running.path) == (4, export.path) and is_our_vblade(site, running)


def test_restore_starts_what_it_can_and_reports_the_rest(site):
    restore_is_safe(site)
    good = exported(site, slot=1)
    doomed = exported(site, slot=2, name="doomed.img")
    for export in (good, doomed):  # a crash
        kill(site, export.pid)
    site.disk_run(["rm", "-f", doomed.path])  # and one backing file lost with it
    error = refused(vblade.restore_exports, site.disk)
    assert "does not exist" in str(error) and "1 export(s) could not be restored" in str(error)
    assert [e.slot for e in ours(vblade.list_exports(site.disk))] == [1]


def restore_is_safe(site: Site) -> None:
    """Restore starts every persisted export of the host. On the lab's disk1 the panel's own may be
    down on purpose (a test of somebody else simulating a failure): then leave them alone."""
    if site.kind != "lab":
        return
    listed = site.disk_run(["sh", "-c", "cd /etc/xenaoe/exports 2>/dev/null && ls -- *.conf"]).stdout.split()
    running = {f"e{e.shelf}.{e.slot}.conf" for e in vblade.list_exports(site.disk)}
    others_down = [c for c in listed if c not in running and not c.startswith(f"e{TEST_SHELF}.")]
    if others_down:
        pytest.skip(f"disk1 has persisted exports that are down ({', '.join(others_down)}): restore would start them")


def ours(exports: list[vblade.RunningExport]) -> list[vblade.RunningExport]:
    """Only this test's exports: on the lab's disk1 the panel may have its own."""
    return [e for e in exports if e.shelf == TEST_SHELF]


def alive(site: Site, pid: int) -> bool:
    """Running and not a zombie (a killed vblade may wait a moment for the machine's init to reap it)."""
    return site.disk_run(["awk", '/^State:/ { exit $2 == "Z" }', f"/proc/{pid}/status"]).returncode == 0


def kill(site: Site, pid: int) -> None:
    site.disk_run(["kill", "-9", str(pid)])
    for _ in range(100):
        if not alive(site, pid):
            return
        time.sleep(0.05)
    raise AssertionError(f"pid {pid} does not die")


def _probe(site: Site) -> list[aoe.AoEAnswer]:
    return [a for a in aoe.probe(site.cpu, site.cpu_interface, site.shelf, listen=0.5) if a.shelf == site.shelf]
