"""A VM's CPU, disk and network figures on its page (vms/stats_chart.py): its samples bucketed by the
database, drawn by the panel's one plotter, shown to whoever sees the VM, for the last hour or day."""
from __future__ import annotations

import datetime
import re
import xml.etree.ElementTree as ET

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from hosts.models import CpuServer
from tenants.services import add_user, create_tenant
from vms import stats_chart
from vms.choices import VmState
from vms.models import VirtualMachine, VmSample
from vms.stats_chart import rate_axis_text, rate_text, rate_top
from xenaoe_panel.timecharts import MAX_POINTS

MIB = 1024 * 1024


def test_rates_read_in_binary_units():
    assert [rate_text(v) for v in (0, 512, 1536, 12 * MIB, 3.5 * 1024 * MIB)] == [
        "0 B/s", "512 B/s", "1.5 KiB/s", "12.0 MiB/s", "3.5 GiB/s"]


def test_an_axis_tops_at_a_round_number_of_its_unit():
    assert [rate_axis_text(v) for v in (1024, 5 * MIB, 500 * 1024, 200 * 1024 * MIB)] == [
        "1 KiB/s", "5 MiB/s", "500 KiB/s", "200 GiB/s"]
    assert rate_top(0) == 1024  # idle: a readable scale, the line on the axis
    assert rate_top(400 * 1024) == 500 * 1024
    assert rate_top(600 * 1024) == rate_top(1001 * 1024) == MIB  # not 1000 or 2000 KiB/s: the next unit
    assert rate_top(1.2 * MIB) == 2 * MIB
    assert rate_top(MIB) == MIB
    assert rate_top(3 * MIB) == 5 * MIB
    assert rate_top(60 * MIB) == 100 * MIB


@pytest.fixture
def web(db) -> VirtualMachine:
    server = CpuServer.objects.create(name="cpu1", address="cpu1.example", libvirt_uri="test:///default",
                                      memory_mib=8192, vcpus=8)
    return VirtualMachine.objects.create(name="web", cpu_server=server, vcpus=2, memory_mib=512, disk_mib=64,
                                         state=VmState.RUNNING, tenant=create_tenant("acme"))


@pytest.fixture
def owner(client, web):
    client.force_login(add_user(web.tenant, "alice", password="alice-password-1"))
    return client


def add_minutes(vm: VirtualMachine, minutes: range, now: datetime.datetime, **figures: float | None) -> None:
    VmSample.objects.bulk_create(
        VmSample(vm=vm, time=now - datetime.timedelta(minutes=60 - m), cpu_vcpus=0.02 * m,
                 **{"disk_read_bps": MIB, "disk_write_bps": MIB / 2, "net_rx_bps": 100 * 1024,
                    "net_tx_bps": None} | figures)
        for m in minutes)


def svgs(html: str) -> dict[str, ET.Element]:
    return {svg.get("data-chart"): svg for svg in map(ET.fromstring, re.findall(r"<svg .*?</svg>", html, re.S))}


def points(element: ET.Element) -> list[tuple[float, float]]:
    return [tuple(map(float, p.split(","))) for p in element.get("points").split()]


def series(svg: ET.Element, name: str) -> list[ET.Element]:
    return [e for e in svg.iter() if e.get("data-series") == name]


def test_the_owner_sees_the_last_hour_of_cpu_disk_and_network(owner, web):
    now = timezone.now()
    add_minutes(web, range(30, 60), now)  # the last half hour, one sample a minute
    html = owner.get("/vms/web/?range=1h").content.decode()
    charts = svgs(html)
    assert set(charts) == {"vm-cpu", "vm-disk", "vm-network"}
    frame = stats_chart.charts(web, "1h")[0]
    cpu = series(charts["vm-cpu"], "cpu")
    assert len(cpu) == 1 and len(points(cpu[0])) == 30 and len(points(series(charts["vm-cpu"], "cpu-area")[0])) == 32
    for x, y in points(cpu[0]):
        assert frame.left <= x <= frame.right and frame.top <= y <= frame.bottom
    # The axis tops at its 2 vCPUs (the dashed line, along the frame's top); the busiest minute: 0.02 * 59.
    assert "2 vCPUs" in html and "at most 1.18 of its 2 vCPUs busy" in html
    assert {y for _, y in points(series(charts["vm-cpu"], "vcpus")[0])} == {frame.top}
    assert min(y for _, y in points(cpu[0])) == pytest.approx(frame.bottom - (frame.bottom - frame.top) * 1.18 / 2,
                                                              abs=0.1)
    # Disk: read 1 MiB/s tops its axis exactly, written half of it.
    read = points(series(charts["vm-disk"], "disk-read")[0])
    written = points(series(charts["vm-disk"], "disk-write")[0])
    assert {y for _, y in read} == {frame.top}
    assert all(y == pytest.approx((frame.top + frame.bottom) / 2, abs=0.1) for _, y in written)
    assert ">1 MiB/s<" in html and "read at most 1.0 MiB/s" in html and "written at most 512.0 KiB/s" in html
    # Network: received measured, sent not (never reported): no line for it, said so by its absence.
    assert len(points(series(charts["vm-network"], "net-rx")[0])) == 30
    assert not series(charts["vm-network"], "net-tx")
    assert "received at most 100.0 KiB/s" in html and "sent at most" not in html
    assert 'aria-current="page">1h<' in html


def test_the_day_and_a_gap(owner, web):
    now = timezone.now()
    add_minutes(web, range(0, 10), now - datetime.timedelta(hours=5))
    add_minutes(web, range(40, 60), now)  # the monitor stopped for hours in between
    day = stats_chart.charts(web, "24h", now=now, interval_s=60)
    hour = stats_chart.charts(web, "1h", now=now, interval_s=60)
    assert (day[0].samples, hour[0].samples) == (30, 20)
    assert len(day[0].series_named("cpu").stretches) == 2  # broken, not bridged
    assert len(hour[0].series_named("cpu").stretches) == 1
    assert stats_chart.charts(web, "nonsense")[0].range_key == stats_chart.DEFAULT_RANGE
    html = owner.get("/vms/web/?range=24h").content.decode()
    assert len(series(svgs(html)["vm-disk"], "disk-read")) == 2 and 'aria-current="page">24h<' in html


def test_no_figures_yet_says_so_once(owner, web, settings):
    settings.VM_STATS_INTERVAL_S = 60
    html = owner.get("/vms/web/").content.decode()
    assert 'data-chart="vm-' not in html
    assert html.count("No figures of web in the last 1h") == 1 and "every 60 s" in html
    assert "CPU server" not in html  # a tenant's user is told nothing of the hosts
    settings.VM_STATS_INTERVAL_S = 0
    assert "No figures are collected here" in owner.get("/vms/web/").content.decode()


def test_the_page_costs_the_same_queries_for_a_day_of_samples(owner, web):
    now = timezone.now()
    add_minutes(web, range(58, 60), now)
    with CaptureQueriesContext(connection) as few:
        assert owner.get("/vms/web/?range=24h").status_code == 200
    VmSample.objects.bulk_create(
        VmSample(vm=web, time=now - datetime.timedelta(minutes=m), cpu_vcpus=1.0, disk_read_bps=1.0)
        for m in range(3, 24 * 60))
    with CaptureQueriesContext(connection) as many:
        html = owner.get("/vms/web/?range=24h").content.decode()
    assert len(many) == len(few)
    assert len(points(series(svgs(html)["vm-cpu"], "cpu")[0])) <= MAX_POINTS
