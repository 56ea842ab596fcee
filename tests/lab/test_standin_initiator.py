"""The lab's AoE initiator stand-in on the wire: /dev/etherd/eS.L on a CPU host is a loop device over
a FUSE file whose I/O travels the SAN to the vblade (lab/standin/aoe_fuse.py). So the bytes land in
the disk server's backing file, a dead disk server fails the I/O of its leg with EIO within a few
seconds (never a hang) while the other leg keeps working, and the same device works again once
the disk server is back. aoe-flush leaves nothing behind."""
from __future__ import annotations

import time

import pytest

from drivers import vblade as vblade_driver
from lab import cluster
from lab.hostproc import ssh_target
from lab.standin.aoe_standin import FUSE_FILE_PREFIX
from lab.topology import host

pytestmark = pytest.mark.lab
EIO_WITHIN = 10.0  # seconds: the initiator's deadline is 5 s
MIB = 1024 * 1024


def _timed(on_host, name: str, command: str) -> tuple[int, str, float]:
    """Run `command` on the host; its exit status, stderr and how long it took there (not counting SSH)."""
    result = on_host(name, f"s=$(date +%s.%N); {command}; rc=$?; e=$(date +%s.%N); echo \"$s $e\"; exit $rc",
                     check=False, timeout=60)
    start, end = (float(x) for x in result.stdout.split()[-2:])
    return result.returncode, result.stderr, end - start


def _sha256(on_host, name: str, command: str) -> str:
    return on_host(name, f"{command} | sha256sum").stdout.split()[0]


def test_io_on_a_cpu_host_goes_through_vblade_to_the_backing_file(on_host, vblade):
    volume = vblade("disk1", 1, 30, size="32M")
    on_host("cpu1", "aoe-discover")
    try:
        device = "stat -c %Hr:%Lr /dev/etherd/e1.30; cat /run/aoe-standin/e1.30.pid"
        before = on_host("cpu1", device).stdout
        on_host("cpu1", "aoe-discover")
        assert on_host("cpu1", device).stdout == before, "discovering again keeps the device and its initiator"
        back_file = on_host("cpu1", "cat /sys/dev/block/$(stat -c %Hr:%Lr /dev/etherd/e1.30)/loop/backing_file").stdout
        assert back_file.strip().endswith(f"/{FUSE_FILE_PREFIX}e1.30"), "the loop is over the initiator's file"

        # CPU host -> SAN -> vblade -> the disk server's file
        written = _sha256(on_host, "cpu1", "head -c 1048576 /dev/urandom | tee /tmp/standin-1m | cat")
        on_host("cpu1", "dd if=/tmp/standin-1m of=/dev/etherd/e1.30 bs=1M seek=3 oflag=direct status=none")
        assert _sha256(on_host, "disk1", f"dd if={volume} bs=1M skip=3 count=1 status=none") == written

        # the disk server's file -> vblade -> SAN -> the CPU host (nothing cached on the CPU host)
        on_host("disk1", f"printf written-on-the-disk-server | dd of={volume} bs=512 seek=100 conv=notrunc status=none")
        read = on_host("cpu1", "dd if=/dev/etherd/e1.30 bs=512 skip=100 count=1 iflag=direct status=none | head -c 26")
        assert read.stdout == "written-on-the-disk-server"

        rc, err, took = _timed(on_host, "cpu1", "dd if=/dev/zero of=/dev/etherd/e1.30 bs=1M count=16 oflag=direct "
                                               "status=none")
        assert rc == 0, err
        rc, err, took_read = _timed(on_host, "cpu1", "dd if=/dev/etherd/e1.30 of=/dev/null bs=1M count=16 "
                                                    "iflag=direct status=none")
        assert rc == 0, err
        print(f"\nstand-in over the SAN: 1 MiB writes {16 / took:.0f} MiB/s, 1 MiB reads {16 / took_read:.0f} MiB/s")
    finally:
        on_host("cpu1", "aoe-flush e1.30; rm -f /tmp/standin-1m")


def test_a_dead_disk_server_fails_its_leg_with_eio_and_serves_it_again_when_back(lab_cluster, on_host):
    disks = {"disk1": (1, ssh_target(host("disk1"))), "disk2": (2, ssh_target(host("disk2")))}
    volumes = {name: f"/srv/xenaoe/volumes/lab-test-standin-e{shelf}.31.img" for name, (shelf, _t) in disks.items()}
    for name, (shelf, target) in disks.items():
        vblade_driver.create_volume(target, volumes[name], 8)
        # persisted, so that disk2's boot (restore-exports) serves it again
        vblade_driver.start_export(target, vblade_driver.ExportSpec(shelf, 31, "san0", volumes[name]))
    try:
        on_host("cpu2", "aoe-discover")
        for shelf in (1, 2):
            on_host("cpu2", f"printf before-e{shelf} | dd of=/dev/etherd/e{shelf}.31 bs=512 conv=sync oflag=direct "
                            "status=none")
        node_before = on_host("cpu2", "stat -c %t:%T /dev/etherd/e2.31").stdout

        cluster.kill_host("disk2")
        try:
            rc, err, took = _timed(on_host, "cpu2", "dd if=/dev/etherd/e2.31 of=/dev/null bs=4096 count=1 "
                                                    "iflag=direct status=none")
            assert rc != 0 and "Input/output error" in err, err
            assert took < EIO_WITHIN, f"a read of the dead leg took {took:.1f} s to fail"
            rc, err, took_write = _timed(on_host, "cpu2", "printf lost | dd of=/dev/etherd/e2.31 bs=512 conv=sync "
                                                          "oflag=direct status=none")
            assert rc != 0 and "Input/output error" in err, err
            assert took_write < EIO_WITHIN
            # the other leg, on disk1, does not notice
            on_host("cpu2", "printf during-e1 | dd of=/dev/etherd/e1.31 bs=512 conv=sync oflag=direct status=none")
            assert on_host("cpu2", "head -c 9 /dev/etherd/e1.31").stdout == "during-e1"
            print(f"\ndead disk server: read failed after {took:.1f} s, then a write after {took_write:.1f} s")
        finally:
            cluster.up(out=lambda line: None)  # boots disk2; its exports are restored

        # the same device, without a new discovery, works again
        assert on_host("cpu2", "stat -c %t:%T /dev/etherd/e2.31").stdout == node_before
        deadline = time.monotonic() + 20
        while True:
            result = on_host("cpu2", "dd if=/dev/etherd/e2.31 bs=512 count=1 iflag=direct status=none | head -c 9",
                             check=False)
            if result.returncode == 0 and result.stdout or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert result.stdout == "before-e2", result.stderr
        on_host("cpu2", "printf after-e2 | dd of=/dev/etherd/e2.31 bs=512 conv=sync oflag=direct status=none")
        assert on_host("disk2", f"head -c 8 {volumes['disk2']}").stdout == "after-e2"
    finally:
        on_host("cpu2", "aoe-flush e1.31 e2.31", check=False)
        for name, (shelf, target) in disks.items():
            vblade_driver.stop_export(target, shelf, 31)
            vblade_driver.remove_volume(target, volumes[name])


def test_flush_of_a_busy_device_keeps_it_working_until_closed_then_nothing_is_left(on_host, vblade):
    vblade("disk2", 2, 32)
    on_host("cpu1", "aoe-discover")
    daemon = "lab.standin.aoe_fus[e] .*--slot 32 "  # [e]: the pattern does not match this very shell
    out = on_host("cpu1", f"""
        pgrep -f '{daemon}' >/dev/null && echo daemon-running
        exec 3<>/dev/etherd/e2.32
        aoe-flush e2.32
        test -e /dev/etherd/e2.32 || echo node-gone
        printf still-open | dd bs=512 conv=sync oflag=direct status=none >&3 && echo written-while-flushed
        exec 3>&-
        for i in $(seq 50); do pgrep -f '{daemon}' >/dev/null || break; sleep 0.1; done
        pgrep -f '{daemon}' >/dev/null || echo daemon-gone
        grep -q ' /run/aoe-standin/e2.32 ' /proc/self/mountinfo || echo unmounted
        losetup --list --noheadings -O BACK-FILE | grep -q '{FUSE_FILE_PREFIX}e2.32' || echo loop-gone
    """).stdout.split()
    assert out == ["daemon-running", "node-gone", "written-while-flushed", "daemon-gone", "unmounted", "loop-gone"]


def test_discovery_sets_a_device_up_again_when_its_export_changed_size(on_host, vblade):
    vblade("disk1", 1, 33, size="8M")
    on_host("cpu1", "aoe-discover")
    try:
        assert on_host("cpu1", "blockdev --getsize64 /dev/etherd/e1.33").stdout.strip() == str(8 * MIB)
        on_host("disk1", "kill $(cat /run/xenaoe/vblade/e1.33.pid); "
                         "truncate -s 12M /srv/xenaoe/volumes/test-e1.33.img; "
                         "setsid nohup vblade 1 33 san0 /srv/xenaoe/volumes/test-e1.33.img </dev/null "
                         ">>/var/log/xenaoe/vblade-e1.33.log 2>&1 & echo $! > /run/xenaoe/vblade/e1.33.pid")
        on_host("cpu1", "aoe-discover")
        assert on_host("cpu1", "blockdev --getsize64 /dev/etherd/e1.33").stdout.strip() == str(12 * MIB)
        daemons = on_host("cpu1", "pgrep -f 'lab.standin.aoe_fus[e] .*--shelf 1 --slot 33 ' | wc -l").stdout
        assert daemons.strip() == "1", "the initiator of the old size is gone"
    finally:
        on_host("cpu1", "aoe-flush e1.33")

