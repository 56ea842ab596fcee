"""Notifications, each trigger from the code that reports it to what a real SMTP server and a real
webhook receiver get (tests/notify_receivers.py), on PostgreSQL.

The deliveries are made here, in-process, by the function a worker runs (notifications.delivery.attempt);
tests/test_notification_delivery.py has a real worker send them, with its retries' real delays.
Who hears of what: operators' targets of everything, a tenant's user's only of the tenant's VMs.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
import redis
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from drivers.errors import DriverError
from ha import failover
from ha.choices import IncidentKind, IncidentState
from ha.incidents import open_incident
from hosts.choices import HostState
from hosts.models import CpuServer
from jobs import runner
from jobs.choices import JobState
from jobs.models import Job
from notifications import delivery, housekeeping
from notifications.choices import WAITING_STATES, DeliveryState, EventKind, Severity, TargetKind
from notifications.models import Delivery, Event, Target
from notifications.n_plus_one import check_n_plus_one
from notifications.notify import notify
from notifications.services import save_target
from notifications.signing import signature, verify
from storage import guest_health
from storage.choices import MirrorHealth, MirrorState
from storage.models import Mirror
from tenants.services import add_user, create_tenant
from tests.notify_receivers import SmtpSink, WebhookReceiver
from tests.test_monitor_unit import _cycles, _monitor, calls, cluster, fake  # noqa: F401
from vms.choices import VmState
from vms.models import VirtualMachine

pytestmark = pytest.mark.django_db


@runner.job_kind("test.notify_failure")
def _plan_failure(ctx: runner.JobContext) -> list[runner.Step]:
    def fail(_ctx: runner.JobContext) -> None:
        raise DriverError("cpu1 (192.0.2.21) refused the connection")
    return [runner.Step("Reach the CPU server", fail)]


@dataclass
class People:
    operator: Any
    alice: Any  # of acme
    bob: Any  # of globex
    acme: Any
    globex: Any


@pytest.fixture
def people(django_user_model) -> People:
    acme, globex = create_tenant("acme"), create_tenant("globex")
    return People(django_user_model.objects.create_user("op", password="op-password-1", is_staff=True),
                  add_user(acme, "alice", password="alice-password-1"),
                  add_user(globex, "bob", password="bob-password-1"), acme, globex)


@pytest.fixture(scope="module")
def smtp_sink():
    sink = SmtpSink().start()
    yield sink
    sink.stop()


@pytest.fixture
def mail(smtp_sink, settings) -> SmtpSink:
    """Django's SMTP backend pointed at the sink, emptied for the test."""
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_USE_TLS = "127.0.0.1", smtp_sink.port, False
    smtp_sink.messages.clear()
    smtp_sink.refused.clear()
    return smtp_sink


@pytest.fixture
def receiver():
    server = WebhookReceiver().start()
    yield server
    server.stop()


def email_target(owner: Any, address: str, **fields: Any) -> Target:
    target = Target(owner=owner, name=address, kind=TargetKind.EMAIL, email=address, **fields)
    save_target(target)
    return target


def webhook_target(owner: Any, url: str, **fields: Any) -> tuple[Target, str]:
    target = Target(owner=owner, name=f"hook of {owner.username}", kind=TargetKind.WEBHOOK, url=url, **fields)
    secret = save_target(target)
    assert secret is not None
    return target, secret


def deliver_all() -> None:
    """What the workers would do, at once and in order: every waiting delivery attempted, a retry without
    its delay."""
    for _ in range(20):
        waiting = Delivery.objects.filter(state__in=WAITING_STATES).order_by("id").values_list("pk", "attempts")
        if not waiting:
            return
        for pk, attempts in waiting:
            delivery.attempt(pk, attempts)
    raise AssertionError("deliveries still waiting after 20 rounds")


def kinds_for(target: Target) -> list[str]:
    return list(target.deliveries.order_by("created_at", "id").values_list("event__kind", flat=True))


def acme_vm(people: People, name: str = "shop", host: CpuServer | None = None, memory_mib: int = 128,
            tenant: Any = None) -> VirtualMachine:
    return VirtualMachine.objects.create(name=name, vcpus=1, memory_mib=memory_mib, disk_mib=32, cpu_server=host,
                                         tenant=tenant or people.acme, state=VmState.RUNNING)


# --- the triggers ------------------------------------------------------------------------------


def test_an_incident_reaches_the_operators_by_email_and_signed_webhook_and_no_tenant(people, mail, receiver):
    cpu1 = CpuServer.objects.create(name="cpu1", address="192.0.2.21", libvirt_uri="test:///default",
                                    memory_mib=4096, vcpus=4)
    acme_vm(people, host=cpu1)  # acme has a guest there: still a host's event, not one of acme's VMs
    email_target(people.operator, "oncall@example.org")
    hook, secret = webhook_target(people.operator, receiver.url())
    alices, _ = webhook_target(people.alice, receiver.url("/alice"))

    incident, created = open_incident(cpu1, IncidentKind.CPU_SERVER_FAILED, "cpu1 missed 3 checks")
    open_incident(cpu1, IncidentKind.CPU_SERVER_FAILED, "cpu1 missed 4 checks")  # the same incident: told once
    deliver_all()

    assert created and Event.objects.count() == 1
    [message] = mail.to("oncall@example.org")
    assert message["Subject"] == "[XenAoE critical] CPU server failed: cpu1"
    assert message["X-XenAoE-Event"] == "incident.opened"
    assert "cpu1 missed 3 checks" in message.get_content() and f"/incidents/{incident.pk}/" in message.get_content()
    [request] = receiver.received
    assert request.path == "/hook" and request.signed_with(secret)
    body = request.json
    assert (body["kind"], body["severity"], body["subject"]) == ("incident.opened", "critical",
                                                                  "CPU server failed: cpu1")
    assert body["url"] == f"/incidents/{incident.pk}/" and body["vm"] is None
    assert hook.deliveries.get().state == DeliveryState.SENT and hook.deliveries.get().response_code == 200
    assert not alices.deliveries.exists()


def test_a_host_that_cannot_be_fenced_is_told_as_critical_at_once(people, receiver):
    cpu1 = CpuServer.objects.create(name="cpu1", address="192.0.2.21", libvirt_uri="test:///default",
                                    memory_mib=4096, vcpus=4, fence_methods="manual", state=HostState.DEAD)
    hook, secret = webhook_target(people.operator, receiver.url(), min_severity=Severity.CRITICAL)
    incident, _ = open_incident(cpu1, IncidentKind.CPU_SERVER_FAILED, "cpu1 missed 3 checks")

    job = failover.start_failover(incident)
    runner.run_job(job.pk)
    deliver_all()

    incident.refresh_from_db()
    assert incident.state == IncidentState.UNFENCED
    # The failed job is an error, below this target's "critical": only the two critical events came.
    assert kinds_for(hook) == ["incident.opened", "host.unfenced"]
    unfenced = receiver.received[1].json
    assert unfenced["subject"] == "cpu1 could not be fenced: its guests wait for an operator's confirmation"
    assert "NO FENCE CONFIRMED for cpu1" in unfenced["details"] and receiver.received[1].signed_with(secret)
    assert Event.objects.filter(kind=EventKind.JOB_FAILED, path=f"/jobs/{job.pk}/").exists()


def test_a_disk_servers_failure_and_return_tell_its_guests_tenant_once_each(people, cluster, fake, calls,  # noqa: F811
                                                                           receiver):
    VirtualMachine.objects.filter(pk=cluster["vm"].pk).update(tenant=people.acme)
    alices, secret = webhook_target(people.alice, receiver.url("/alice"), min_severity=Severity.INFO)
    bobs, _ = webhook_target(people.bob, receiver.url("/bob"), min_severity=Severity.INFO)
    monitor = _monitor(fake)

    fake.silent = {"disk2"}
    _cycles(monitor, 3)  # declared dead: the mirror degraded on the wire
    guest_health.record_view(cluster["mirror"].pk, guest_health.GuestView(
        MirrorHealth.DEGRADED, "md0 [U_]", missing_legs=(1,)))  # and the guest sees it too: the same news
    fake.silent = set()
    _cycles(monitor, 3)  # back, exports restored: resyncing
    guest_health.record_view(cluster["mirror"].pk, guest_health.GuestView(MirrorHealth.HEALTHY, "md0 [UU]"))
    _cycles(monitor, 2)
    deliver_all()

    assert Mirror.objects.get(pk=cluster["mirror"].pk).state == MirrorState.HEALTHY
    assert kinds_for(alices) == ["mirror.degraded", "mirror.resynced"]
    degraded, resynced = (r.json for r in receiver.received)
    assert (degraded["vm"], degraded["tenant"], degraded["severity"]) == ("web", "acme", "warning")
    assert degraded["subject"] == "the disk of web has one leg left"
    assert resynced["subject"] == "the disk of web has both legs in sync again" and resynced["severity"] == "info"
    # The incident itself is the host's, and the other tenant has no part in it.
    assert not bobs.deliveries.exists() and all(r.signed_with(secret) for r in receiver.received)


def test_a_leg_lost_inside_the_guest_alone_is_told_and_a_new_arrays_first_sync_is_not(people, cluster):  # noqa: F811
    VirtualMachine.objects.filter(pk=cluster["vm"].pk).update(tenant=people.acme)
    mirror = cluster["mirror"]

    def guest_says(health: str, detail: str, missing: tuple[int, ...] = ()) -> None:
        guest_health.record_view(mirror.pk, guest_health.GuestView(health, detail, missing_legs=missing))

    guest_says(MirrorHealth.RESYNCING, "md0 [UU], resync")  # a new VM's array, first seen syncing
    guest_says(MirrorHealth.HEALTHY, "md0 [UU]")
    assert not Event.objects.exists()

    guest_says(MirrorHealth.DEGRADED, "md0 [_U]", (0,))
    guest_says(MirrorHealth.RESYNCING, "md0 [_U], recovery")
    guest_says(MirrorHealth.HEALTHY, "md0 [UU]")
    events = list(Event.objects.order_by("id").values_list("kind", "vm_name", "tenant_slug", "details"))
    assert [e[:3] for e in events] == [("mirror.degraded", "web", "acme"), ("mirror.resynced", "web", "acme")]
    assert events[0][3] == "The guest's array is degraded: leg 0 not in sync (md0 [_U])."


def test_n_plus_one_lost_and_restored_are_told_once_each_to_operators_only(people, receiver):
    cpu1, cpu2 = (CpuServer.objects.create(name=n, address=f"192.0.2.{i}", libvirt_uri="test:///default",
                                           memory_mib=1024, vcpus=4) for i, n in ((21, "cpu1"), (22, "cpu2")))
    hook, _ = webhook_target(people.operator, receiver.url(), min_severity=Severity.INFO)
    alices, _ = webhook_target(people.alice, receiver.url("/alice"), min_severity=Severity.INFO)
    acme_vm(people, "small", cpu1, 512)
    assert check_n_plus_one() is False  # holds, as it did: nothing to tell
    big = acme_vm(people, "big", cpu2, 768)  # if cpu2 fails, cpu1 has 512 MiB free for it

    assert check_n_plus_one() is True
    assert check_n_plus_one() is False  # still lost: told once
    big.delete()
    assert check_n_plus_one() is True
    deliver_all()

    assert kinds_for(hook) == ["capacity.n-plus-one-lost", "capacity.n-plus-one-restored"]
    lost = receiver.received[0].json
    assert lost["severity"] == "warning"
    assert "if cpu2 fails, no surviving CPU server has room for big (768 MiB)" in lost["details"]
    assert not alices.deliveries.exists()


def test_a_failed_job_is_told_to_its_tenant_without_hosts_and_never_to_another_tenant(people, receiver):
    cpu1 = CpuServer.objects.create(name="cpu1", address="192.0.2.21", libvirt_uri="test:///default",
                                    memory_mib=4096, vcpus=4)
    vm = acme_vm(people, host=cpu1)
    hook, _ = webhook_target(people.operator, receiver.url("/op"))
    alices, secret = webhook_target(people.alice, receiver.url("/alice"))
    bobs, _ = webhook_target(people.bob, receiver.url("/bob"))
    job = Job.objects.create(kind="test.notify_failure", vm=vm, target_name=vm.name, tenant=people.acme)

    runner.run_job(job.pk)
    deliver_all()

    job.refresh_from_db()
    assert job.state == JobState.FAILED
    assert kinds_for(hook) == kinds_for(alices) == ["job.failed"] and not bobs.deliveries.exists()
    by_path = {r.path: r.json for r in receiver.received}
    assert by_path["/op"]["details"] == "Reach the CPU server failed: cpu1 (192.0.2.21) refused the connection"
    assert by_path["/alice"]["details"] == ("Reach the CPU server failed: a CPU server (an address) refused the "
                                            "connection")
    assert by_path["/alice"]["subject"] == f"job #{job.pk} test.notify_failure shop failed"
    assert by_path["/alice"]["vm"] == "shop" and by_path["/alice"]["tenant"] == "acme"


def test_a_cancelled_job_tells_nobody(people, receiver):
    webhook_target(people.operator, receiver.url(), min_severity=Severity.INFO)
    job = Job.objects.create(kind="test.notify_failure", cancel_requested=True)
    runner.run_job(job.pk)
    job.refresh_from_db()
    assert job.state == JobState.CANCELLED and not Event.objects.exists()


# --- who hears of what -------------------------------------------------------------------------


def test_a_targets_kinds_and_severity_filter_what_it_is_sent(people):
    failures = email_target(people.operator, "jobs@example.org", kinds=[EventKind.JOB_FAILED],
                            min_severity=Severity.ERROR)
    pager = email_target(people.operator, "pager@example.org", min_severity=Severity.CRITICAL)
    everything = email_target(people.operator, "log@example.org", min_severity=Severity.INFO)
    off = email_target(people.operator, "off@example.org", enabled=False)

    notify(EventKind.INCIDENT_OPENED, Severity.CRITICAL, "CPU server failed: cpu1")
    notify(EventKind.JOB_FAILED, Severity.ERROR, "job #1 vm.start shop failed")
    notify(EventKind.N_PLUS_ONE_LOST, Severity.WARNING, "N+1 lost")

    assert kinds_for(failures) == ["job.failed"]
    assert kinds_for(pager) == ["incident.opened"]
    assert kinds_for(everything) == ["incident.opened", "job.failed", "capacity.n-plus-one-lost"]
    assert kinds_for(off) == []


def test_a_tenants_target_hears_only_of_its_own_vms_whatever_its_filter_says(people):
    alices = email_target(people.alice, "alice@example.org", min_severity=Severity.INFO)
    theirs, others = acme_vm(people, "shop"), acme_vm(people, "db", tenant=people.globex)

    for kind in (EventKind.INCIDENT_OPENED, EventKind.HOST_UNFENCED, EventKind.N_PLUS_ONE_LOST):
        notify(kind, Severity.CRITICAL, f"{kind} of a host or the cluster")
    notify(EventKind.MIRROR_DEGRADED, Severity.WARNING, "the disk of db has one leg left", vm=others)
    notify(EventKind.JOB_FAILED, Severity.ERROR, "job of globex", tenant=people.globex)
    notify(EventKind.MIRROR_DEGRADED, Severity.WARNING, "the disk of shop has one leg left", vm=theirs)
    # A host-level kind carrying the tenant's VM is still not for them (only VM kinds are).
    notify(EventKind.INCIDENT_OPENED, Severity.CRITICAL, "odd", vm=theirs)

    assert list(alices.deliveries.values_list("event__subject", flat=True)) == ["the disk of shop has one leg left"]


def test_a_user_who_leaves_the_tenant_stops_hearing_of_its_vms(people):
    alices = email_target(people.alice, "alice@example.org")
    people.alice.membership.delete()
    notify(EventKind.JOB_FAILED, Severity.ERROR, "job of acme", tenant=people.acme)
    assert not alices.deliveries.exists()


def test_a_tenants_user_may_not_subscribe_to_host_events(people):
    target = Target(owner=people.alice, name="all", kind=TargetKind.EMAIL, email="a@example.org",
                    kinds=[EventKind.INCIDENT_OPENED])
    with pytest.raises(ValidationError, match="hears only of their VMs' events, not incident.opened"):
        save_target(target)
    assert not Target.objects.exists()


# --- delivery ----------------------------------------------------------------------------------


def test_a_rolled_back_change_notifies_nobody_and_a_committed_one_queues_on_the_default_queue(
        people, settings, django_capture_on_commit_callbacks):
    email_target(people.operator, "oncall@example.org")
    cpu1 = CpuServer.objects.create(name="cpu1", address="192.0.2.21", libvirt_uri="test:///default",
                                    memory_mib=4096, vcpus=4)
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    queued = broker.llen(settings.CELERY_TASK_DEFAULT_QUEUE)

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        with pytest.raises(RuntimeError), transaction.atomic():
            open_incident(cpu1, IncidentKind.CPU_SERVER_FAILED, "cpu1 missed 3 checks")
            raise RuntimeError("the change failed after the incident was written")
    assert callbacks == [] and not Event.objects.exists() and not Delivery.objects.exists()

    with django_capture_on_commit_callbacks(execute=True):
        open_incident(cpu1, IncidentKind.CPU_SERVER_FAILED, "cpu1 missed 3 checks")
    assert broker.llen(settings.CELERY_TASK_DEFAULT_QUEUE) == queued + 1
    assert broker.llen(settings.CELERY_HA_QUEUE) == 0  # the failovers' queue stays free


def test_a_webhooks_signature_covers_its_timestamp_and_body():
    body = b'{"kind":"test"}'
    signed = signature("s3cret", "1700000000", body)
    assert re.fullmatch(r"sha256=[0-9a-f]{64}", signed)
    assert verify("s3cret", "1700000000", body, signed, now=1700000010)
    assert not verify("s3cret", "1700000000", b'{"kind":"tEst"}', signed, now=1700000010)  # another body
    assert not verify("s3cret", "1700000001", body, signed, now=1700000010)  # another timestamp
    assert not verify("other", "1700000000", body, signed, now=1700000010)  # another secret
    assert not verify("s3cret", "1700000000", body, signed, now=1700000000 + 301)  # too old: a replay


def test_retries_wait_twice_as_long_each_time_up_to_the_cap(settings):
    settings.NOTIFY_RETRY_BASE_S, settings.NOTIFY_RETRY_MAX_S = 30, 200
    assert [delivery.backoff_s(n) for n in range(1, 6)] == [30, 60, 120, 200, 200]


def test_a_failing_receiver_is_tried_again_and_a_refusal_is_not(people, receiver, settings):
    settings.NOTIFY_MAX_ATTEMPTS = 3
    hook, secret = webhook_target(people.operator, receiver.url())
    receiver.answers = [503, 502]
    notify(EventKind.JOB_FAILED, Severity.ERROR, "job #1 failed")
    pk = hook.deliveries.get().pk

    assert delivery.attempt(pk, 0) == settings.NOTIFY_RETRY_BASE_S
    retrying = Delivery.objects.get(pk=pk)
    assert (retrying.state, retrying.attempts, retrying.response_code) == (DeliveryState.RETRYING, 1, 503)
    assert retrying.last_error.startswith("HTTP 503") and retrying.next_attempt_at > timezone.now()
    assert delivery.attempt(pk, 0) is None  # a duplicate of the first message: not its turn any more
    assert delivery.attempt(pk, 1) == 2 * settings.NOTIFY_RETRY_BASE_S
    assert delivery.attempt(pk, 2) is None
    sent = Delivery.objects.get(pk=pk)
    assert (sent.state, sent.attempts, sent.response_code, sent.last_error) == (DeliveryState.SENT, 3, 200, "")
    assert [r.answered for r in receiver.received] == [503, 502, 200]
    assert len({r.headers["X-XenAoE-Delivery"] for r in receiver.received}) == 1
    assert all(r.signed_with(secret) for r in receiver.received)

    receiver.answers = [401]
    notify(EventKind.JOB_FAILED, Severity.ERROR, "job #2 failed")
    refused = hook.deliveries.order_by("-id").first()
    assert delivery.attempt(refused.pk, 0) is None
    refused.refresh_from_db()
    assert (refused.state, refused.attempts, refused.response_code) == (DeliveryState.FAILED, 1, 401)


def test_a_refused_email_address_fails_at_once_saying_why(people, mail):
    target = email_target(people.operator, "gone@example.org")
    mail.refused.add("gone@example.org")
    notify(EventKind.JOB_FAILED, Severity.ERROR, "job #1 failed")
    deliver_all()
    failed = target.deliveries.get()
    assert (failed.state, failed.attempts) == (DeliveryState.FAILED, 1)
    assert "refused gone@example.org" in failed.last_error and mail.messages == []


def test_a_tenants_webhook_may_not_reach_the_panels_own_networks(people, receiver, settings):
    settings.NOTIFY_TENANT_WEBHOOKS_PRIVATE = False  # as on a real site (the lab's settings allow it)
    alices, _ = webhook_target(people.alice, receiver.url("/alice"))
    operators, _ = webhook_target(people.operator, receiver.url("/op"))
    notify(EventKind.JOB_FAILED, Severity.ERROR, "job of acme", tenant=people.acme)
    deliver_all()
    refused = alices.deliveries.get()
    assert (refused.state, refused.attempts) == (DeliveryState.FAILED, 1)
    assert "resolves to 127.0.0.1, not a public address" in refused.last_error
    assert operators.deliveries.get().state == DeliveryState.SENT
    assert [r.path for r in receiver.received] == ["/op"]


def test_housekeeping_sends_again_what_lost_its_message_and_what_a_dead_worker_left(people, settings):
    email_target(people.operator, "oncall@example.org")
    notify(EventKind.JOB_FAILED, Severity.ERROR, "job #1 failed")
    notify(EventKind.JOB_FAILED, Severity.ERROR, "job #2 failed")
    notify(EventKind.JOB_FAILED, Severity.ERROR, "job #3 failed")
    lost, died, fresh = Delivery.objects.order_by("id")
    long_ago = timezone.now() - timedelta(seconds=settings.NOTIFY_RESEND_AFTER_S + 60)
    Delivery.objects.filter(pk=lost.pk).update(next_attempt_at=long_ago)
    Delivery.objects.filter(pk=died.pk).update(state=DeliveryState.SENDING, attempts=1)
    Delivery.objects.filter(pk=died.pk).update(updated_at=long_ago)  # auto_now: set apart
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    queued = broker.llen(settings.CELERY_TASK_DEFAULT_QUEUE)

    assert sorted(housekeeping.resend_lost()) == [lost.pk, died.pk]
    died.refresh_from_db()
    assert died.state == DeliveryState.RETRYING and "stopped during the attempt" in died.last_error
    assert broker.llen(settings.CELERY_TASK_DEFAULT_QUEUE) == queued + 2
    assert housekeeping.resend_lost() == []  # just sent: not again at once
    assert Delivery.objects.get(pk=fresh.pk).state == DeliveryState.PENDING


def test_old_events_go_with_their_deliveries(people, settings):
    email_target(people.operator, "oncall@example.org")
    notify(EventKind.JOB_FAILED, Severity.ERROR, "old")
    notify(EventKind.JOB_FAILED, Severity.ERROR, "new")
    Event.objects.filter(subject="old").update(created_at=timezone.now() - timedelta(days=31))
    settings.NOTIFY_RETENTION_DAYS = 30
    assert housekeeping.prune_events() == 1
    assert list(Delivery.objects.values_list("event__subject", flat=True)) == ["new"]
