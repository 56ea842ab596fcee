"""A host's state changes in one place (hosts/states.py): a compare-and-set on the state the writer
read, then one event to the pages. Every writer goes through it, so every change is published."""
from __future__ import annotations

import pytest

from ha import fencing, storage_health
from ha.maintenance import enter_maintenance
from hosts import states
from hosts.choices import HostState
from hosts.models import CpuServer, DiskServer

pytestmark = pytest.mark.django_db


@pytest.fixture
def published(monkeypatch) -> list[dict]:
    sent: list[dict] = []
    monkeypatch.setattr(states, "send_on_commit", lambda groups, event, what: sent.append(
        {"groups": groups, **event["host"]}))
    return sent


@pytest.fixture
def cpu() -> CpuServer:
    return CpuServer.objects.create(name="cpu1", address="192.0.2.21", libvirt_uri="test:///default",
                                    memory_mib=1024, vcpus=4)


def test_a_change_is_written_stamped_and_published_once(cpu, published):
    assert states.change_state(cpu, HostState.SUSPECT, missed_checks=1)
    row = CpuServer.objects.get(pk=cpu.pk)
    assert (row.state, row.missed_checks, cpu.state, cpu.missed_checks) == ("suspect", 1, "suspect", 1)
    assert row.state_changed_at is not None and row.state_changed_at == cpu.state_changed_at
    assert published == [{"groups": ["hosts"], "kind": "cpu", "id": cpu.pk, "name": "cpu1", "state": "suspect",
                          "state_display": "Suspect", "colour": "warning", "missed_checks": 1,
                          "last_check_error": "", "last_seen_at": None}]


def test_a_writer_that_read_a_stale_state_changes_nothing(cpu, published):
    stale = CpuServer.objects.get(pk=cpu.pk)
    assert states.change_state(cpu, HostState.MAINTENANCE)
    assert not states.change_state(stale, HostState.FENCED)
    assert CpuServer.objects.get(pk=cpu.pk).state == HostState.MAINTENANCE and stale.state == HostState.UP
    assert [event["state"] for event in published] == ["maintenance"]


def test_the_same_state_with_new_check_results_keeps_its_stamp(cpu, published):
    states.change_state(cpu, HostState.SUSPECT)
    stamped = cpu.state_changed_at
    assert states.change_state(cpu, HostState.SUSPECT, missed_checks=2, publish=False)
    assert CpuServer.objects.get(pk=cpu.pk).state_changed_at == stamped and len(published) == 1


def test_every_writer_publishes_its_change(cpu, published):
    enter_maintenance(cpu)
    CpuServer.objects.filter(pk=cpu.pk).update(state=HostState.DEAD)
    assert fencing.mark_fenced(CpuServer.objects.get(pk=cpu.pk))
    disk = DiskServer.objects.create(name="disk1", address="192.0.2.31", aoe_shelf=1, capacity_mib=1024,
                                     state=HostState.MAINTENANCE, missed_checks=4)
    storage_health.return_to_service(disk)  # a disk server back in service: once unpublished
    assert [(event["name"], event["state"]) for event in published] == [
        ("cpu1", "maintenance"), ("cpu1", "fenced"), ("disk1", "up")]
    assert published[-1]["missed_checks"] == 0
