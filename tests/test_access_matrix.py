"""Who may reach what: every URL the panel serves, and every websocket route, for an anonymous
visitor, a user of another tenant, and a user who may.

The cases are generated from the URL conf: a URL name (or websocket route) without a rule here
fails the suite, so a new endpoint cannot ship without saying who may use it. Rules:
- PUBLIC: anyone (login, password reset).
- SIGNED_IN: any signed-in user; what they see is filtered (tested in test_tenants.py).
- TENANT: an object a tenant owns: its users may, another tenant's users get a 404.
- OPERATOR: operators only; everyone else signed in gets a 404 (never a 403 that confirms it exists).
- SCRAPER: Prometheus, with the metrics token (`Authorization: Bearer`); no session opens it, anyone's: 401.
Anonymous visitors are sent to the login page (pages) or get a 401 (the API).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from ha.choices import IncidentKind, IncidentState
from ha.incidents import open_incident
from ha.models import Incident
from hosts.choices import HostState
from hosts.models import CpuServer, DiskServer
from hosts.verify import Finding
from images.models import Image
from jobs.models import Job, JobLogEntry
from networks.models import Network
from notifications.models import Target
from notifications.webhook_secrets import new_secret
from sshkeys.models import SshKey
from tenants.models import TENANT_ACTIONS
from tenants.services import add_user, create_tenant
from vms.choices import VmState
from vms.models import AntiAffinityGroup, VirtualMachine

pytestmark = pytest.mark.django_db

PUBLIC, SIGNED_IN, TENANT, OPERATOR = "public", "signed-in", "tenant", "operator"
# An operators' action on an object tenants see (migrate a VM, confirm an incident's fence): another
# tenant's object is a 404, the user's own a 403 (it exists for them; they may not do this to it).
OPERATOR_ACTION = "operator-action"
SCRAPER = "scraper"


@dataclass
class World:
    """Two tenants, each with a running and a stopped VM, a job and an incident of its own."""

    operator: Any
    alice: Any  # of acme: "own" below
    bob: Any  # of globex: "other" below
    vms: dict[str, VirtualMachine]
    jobs: dict[str, Job]
    incidents: dict[str, Any]
    cpu: dict[str, CpuServer]
    disk: dict[str, DiskServer]
    verify_job: Job
    images: dict[str, Any] = field(default_factory=dict)
    keys: dict[str, Any] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    groups: dict[str, AntiAffinityGroup] = field(default_factory=dict)


@pytest.fixture
def world(django_user_model) -> World:
    cpu = {n: CpuServer.objects.create(name=n, address=f"192.0.2.{i}", libvirt_uri="test:///default",
                                       memory_mib=8192, vcpus=8) for i, n in enumerate(["cpu1", "cpu2", "cpu3"])}
    disk = {n: DiskServer.objects.create(name=n, address=f"192.0.2.{10 + i}", aoe_shelf=i + 1, capacity_mib=10**5)
            for i, n in enumerate(["disk1", "disk2", "disk3"])}
    acme = create_tenant("acme", allowed_actions=list(TENANT_ACTIONS))
    globex = create_tenant("globex", allowed_actions=list(TENANT_ACTIONS))
    users = {"own": add_user(acme, "alice", password="alice-password-1"),
             "other": add_user(globex, "bob", password="bob-password-1")}
    vms, jobs = {}, {}
    for whose, tenant, host in (("own", acme, cpu["cpu1"]), ("other", globex, cpu["cpu2"])):
        for state in (VmState.RUNNING, VmState.STOPPED):
            vm = VirtualMachine.objects.create(name=f"{tenant.slug}-{state}", vcpus=1, memory_mib=128, disk_mib=64,
                                               cpu_server=host, tenant=tenant, state=state)
            vms[f"{whose}-{state}"] = vm
        jobs[whose] = Job.objects.create(kind="vm.reboot", vm=None, target_name=vms[f"{whose}-running"].name,
                                         tenant=tenant, state="running", user=users[whose])
        JobLogEntry.objects.create(job=jobs[whose], serial=1, message="rebooting")
    incidents = {
        "own": open_incident(cpu["cpu1"], IncidentKind.CPU_SERVER_FAILED, "cpu1 missed 3 checks")[0],
        "other": open_incident(cpu["cpu2"], IncidentKind.CPU_SERVER_FAILED, "cpu2 missed 3 checks")[0],
    }
    CpuServer.objects.filter(pk=cpu["cpu3"].pk).update(state=HostState.MAINTENANCE)
    DiskServer.objects.filter(pk=disk["disk3"].pk).update(state=HostState.MAINTENANCE)
    verify_job = Job.objects.create(kind="cluster.verify", state="succeeded")
    finding = Finding("unknown-domain", "warning", "xa-ghost", "a domain no VM claims", "nothing")
    JobLogEntry.objects.create(job=verify_job, serial=1, message="finding", data={"finding": finding.as_dict()})
    images, keys = {}, {}
    for whose, tenant in (("own", acme), ("other", globex)):
        # An image published to one tenant only, and a user's own SSH key: the other's are 404s.
        images[whose] = Image.objects.create(name=f"{tenant.slug}-os", os_name="Linux", size_mib=512, sha256="0" * 64,
                                             kernel_version="6.1", kernel_sha256="1" * 64, initrd_sha256="2" * 64,
                                             login_user="debian", public=False)
        images[whose].tenants.set([tenant])
        keys[whose] = SshKey.objects.create(user=users[whose], key="ssh-ed25519 AAAA", fingerprint=f"SHA256:{whose}")
    # A network no tenant is given: operators only.
    Network.objects.create(name="private", bridge="br1", cidr="10.9.0.0/24", pool_start="10.9.0.10",
                           pool_end="10.9.0.20", public=False)
    # Both tenants name a group "web": names are a tenant's own.
    groups = {whose: AntiAffinityGroup.objects.create(name="web", tenant=tenant)
              for whose, tenant in (("own", acme), ("other", globex))}
    return World(
        operator=django_user_model.objects.create_user("op", password="op-password-1", is_staff=True),
        alice=users["own"], bob=users["other"],
        vms=vms, jobs=jobs, incidents=incidents, cpu=cpu, disk=disk, verify_job=verify_job, images=images, keys=keys,
        groups=groups,
    )


Args = Callable[[World, str], dict[str, Any]]


def none(w: World, whose: str) -> dict[str, Any]:
    return {}


def vm(state: str = VmState.RUNNING) -> Args:
    return lambda w, whose: {"name": w.vms[f"{whose}-{state}"].name}


def job(w: World, whose: str) -> dict[str, Any]:
    return {"pk": w.jobs[whose].pk}


def incident(w: World, whose: str) -> dict[str, Any]:
    return {"pk": w.incidents[whose].pk}


def group(w: World, whose: str) -> dict[str, Any]:
    return {"pk": w.groups[whose].pk}


def unfenced_incident(w: World, whose: str) -> dict[str, Any]:
    """An incident an operator may confirm: its host declared dead and no fence method confirmed."""
    found = w.incidents[whose]
    CpuServer.objects.filter(pk=found.cpu_server_id).update(state=HostState.DEAD)
    Incident.objects.filter(pk=found.pk).update(state=IncidentState.UNFENCED)
    return {"pk": found.pk}


def notify_target(w: World, whose: str) -> dict[str, Any]:
    """A webhook target of the user's own (alice's for "own", bob's for "other")."""
    owner = w.alice if whose == "own" else w.bob
    target, _ = Target.objects.get_or_create(owner=owner, name="pager", defaults={
        "kind": "webhook", "url": "https://hooks.example.org/xenaoe", "secret_encrypted": new_secret()[1]})
    return {"pk": target.pk}


@dataclass(frozen=True)
class Rule:
    who: str
    args: Args = none
    method: str = "get"
    data: dict[str, Any] = field(default_factory=dict)
    ok: tuple[int, ...] = (200,)  # what the allowed user gets


JOB_STARTED_PAGE = (302,)  # a page that starts a job redirects to it
JOB_STARTED_API = (202,)

PAGE_RULES: dict[str, list[Rule]] = {
    "dashboard": [Rule(SIGNED_IN, ok=(200, 302))],  # operators: the dashboard; tenants: redirected to their VMs
    "host-list": [Rule(OPERATOR)],
    "cpuserver-detail": [Rule(OPERATOR, lambda w, _: {"pk": w.cpu["cpu1"].pk})],
    "diskserver-detail": [Rule(OPERATOR, lambda w, _: {"pk": w.disk["disk1"].pk})],
    "cluster-verify": [Rule(OPERATOR)],
    "cluster-verify-run": [Rule(OPERATOR, method="post", ok=JOB_STARTED_PAGE)],
    "cluster-verify-job": [Rule(OPERATOR, lambda w, _: {"pk": w.verify_job.pk})],
    "cluster-verify-fix": [Rule(OPERATOR, lambda w, _: {"pk": w.verify_job.pk, "serial": 1}, "post",
                                ok=(302,))],
    "vm-list": [Rule(SIGNED_IN)],
    "vm-create": [Rule(SIGNED_IN), Rule(SIGNED_IN, method="post", ok=(302,),
                                        data={"name": "fresh", "vcpus": 1, "memory_mib": 128, "disk_mib": 64})],
    "vm-placement": [Rule(OPERATOR)],
    "vm-quota": [Rule(SIGNED_IN)],
    "vm-detail": [Rule(TENANT, vm())],
    "vm-action": [Rule(TENANT, vm(), "post", {"action": "reboot"}, JOB_STARTED_PAGE)],
    "vm-migrate": [Rule(OPERATOR, vm(), "post", ok=JOB_STARTED_PAGE)],
    "vm-eject": [Rule(TENANT, vm(), "post", ok=(302,))],
    "vm-groups": [Rule(TENANT, vm(), "post", ok=(302,))],
    "vm-group-list": [Rule(SIGNED_IN), Rule(SIGNED_IN, method="post", data={"name": "db"}, ok=(302,))],
    "vm-group-delete": [Rule(TENANT, group, "post", ok=(302,))],
    # Another tenant's: 404; the user's own without the tenant's `console` permission: 403
    # (tests/test_console_unit.py).
    "vm-console": [Rule(TENANT, vm())],
    "vm-console-vnc": [Rule(TENANT, vm())],
    "vm-delete": [Rule(TENANT, vm(VmState.STOPPED)),
                  Rule(TENANT, vm(VmState.STOPPED), "post", {"confirm_name": "*"}, JOB_STARTED_PAGE)],
    "job-list": [Rule(SIGNED_IN)],
    "job-detail": [Rule(TENANT, job)],
    "job-cancel": [Rule(TENANT, job, "post", ok=(302,))],
    "job-log": [Rule(TENANT, job)],
    "incident-list": [Rule(SIGNED_IN)],
    "audit-list": [Rule(SIGNED_IN)],  # what each sees: tests/test_audit.py
    "incident-detail": [Rule(TENANT, incident)],
    "incident-confirm-fenced": [Rule(OPERATOR, unfenced_incident, "post", ok=(302,))],
    "host-enter-maintenance": [Rule(OPERATOR, lambda w, _: {"pk": w.cpu["cpu2"].pk}, "post", ok=(302,))],
    "host-return-to-service": [Rule(OPERATOR, lambda w, _: {"kind": "cpu", "pk": w.cpu["cpu3"].pk}, "post",
                                    ok=JOB_STARTED_PAGE)],
    "image-list": [Rule(SIGNED_IN)],
    "image-detail": [Rule(TENANT, lambda w, whose: {"name": w.images[whose].name})],
    "image-upload": [Rule(OPERATOR)],
    "image-action": [Rule(OPERATOR, lambda w, _: {"name": w.images["own"].name}, "post", {"action": "default"},
                          ok=(302,))],
    "network-list": [Rule(SIGNED_IN)],
    "network-create": [Rule(OPERATOR)],
    "ssh-keys": [Rule(SIGNED_IN)],
    # A user's own notification targets (operators see every one): another user's are 404s.
    "notification-targets": [Rule(SIGNED_IN)],
    "notification-target-create": [Rule(SIGNED_IN), Rule(SIGNED_IN, method="post", ok=(302,), data={
        "name": "mail", "kind": "email", "email": "alice@example.org", "min_severity": 20, "enabled": "on"})],
    "notification-target-detail": [Rule(TENANT, notify_target)],
    "notification-target-edit": [Rule(TENANT, notify_target)],
    "notification-target-test": [Rule(TENANT, notify_target, "post", ok=(302,))],
    "notification-target-rotate-secret": [Rule(TENANT, notify_target, "post", ok=(302,))],
    "notification-target-delete": [Rule(TENANT, notify_target, "post", ok=(302,))],
    "ssh-key-delete": [Rule(TENANT, lambda w, whose: {"pk": w.keys[whose].pk}, "post", ok=(302,))],
    "login": [Rule(PUBLIC)],
    "logout": [Rule(PUBLIC, method="post", ok=(302,))],
    "password_reset": [Rule(PUBLIC)],
    "password_reset_done": [Rule(PUBLIC)],
    "password_reset_confirm": [Rule(PUBLIC, lambda w, _: {"uidb64": "MQ", "token": "set-password"})],
    "password_reset_complete": [Rule(PUBLIC)],
    "password_change": [Rule(SIGNED_IN)],
    "password_change_done": [Rule(SIGNED_IN)],
    "metrics": [Rule(SCRAPER)],
}

def cpu(name: str) -> Args:
    return lambda w, _: {"name": name}


API_RULES: dict[str, list[Rule]] = {
    "api:vm-list": [Rule(SIGNED_IN), Rule(SIGNED_IN, method="post", ok=JOB_STARTED_API,
                                          data={"name": "fresh", "vcpus": 1, "memory_mib": 128, "disk_mib": 64})],
    "api:vm-detail": [Rule(TENANT, vm()), Rule(TENANT, vm(VmState.STOPPED), "delete", ok=JOB_STARTED_API)],
    "api:vm-start": [Rule(TENANT, vm(VmState.STOPPED), "post", ok=JOB_STARTED_API)],
    "api:vm-shutdown": [Rule(TENANT, vm(), "post", ok=JOB_STARTED_API)],
    "api:vm-reboot": [Rule(TENANT, vm(), "post", ok=JOB_STARTED_API)],
    "api:vm-force-off": [Rule(TENANT, vm(), "post", ok=JOB_STARTED_API)],
    "api:vm-migrate": [Rule(OPERATOR_ACTION, vm(), "post", ok=JOB_STARTED_API)],
    # The matrix's VMs have no ISO in their drive: whoever may eject is told so (400), not refused.
    "api:vm-eject": [Rule(TENANT, vm(), "post", ok=(400,))],
    "api:vm-anti-affinity-groups": [Rule(TENANT, vm(), "post", {"groups": ["web"]})],
    "api:antiaffinitygroup-list": [Rule(SIGNED_IN), Rule(SIGNED_IN, method="post", data={"name": "db"}, ok=(201,))],
    "api:antiaffinitygroup-detail": [Rule(TENANT, group), Rule(TENANT, group, "delete", ok=(204,))],
    "api:job-list": [Rule(SIGNED_IN)],
    "api:job-detail": [Rule(TENANT, job)],
    "api:job-cancel": [Rule(TENANT, job, "post", ok=JOB_STARTED_API)],
    "api:job-log": [Rule(TENANT, job)],
    "api:incident-list": [Rule(SIGNED_IN)],
    "api:auditevent-list": [Rule(SIGNED_IN)],
    # A user's own notification targets (operators: everyone's); another user's are 404s, whatever the verb.
    "api:notificationtarget-list": [Rule(SIGNED_IN), Rule(SIGNED_IN, method="post", ok=(201,), data={
        "name": "mail", "kind": "email", "email": "alice@example.org"})],
    "api:notificationtarget-detail": [Rule(TENANT, notify_target), Rule(TENANT, notify_target, "patch",
                                                                         {"enabled": False}),
                                      Rule(TENANT, notify_target, "delete", ok=(204,))],
    "api:notificationtarget-test": [Rule(TENANT, notify_target, "post", ok=(202,))],
    "api:notificationtarget-rotate-secret": [Rule(TENANT, notify_target, "post")],
    "api:notificationtarget-deliveries": [Rule(TENANT, notify_target)],
    "api:incident-detail": [Rule(TENANT, incident)],
    "api:incident-confirm-fence": [Rule(OPERATOR_ACTION, unfenced_incident, "post", ok=JOB_STARTED_API)],
    "api:cpuserver-list": [Rule(OPERATOR)],
    "api:cpuserver-detail": [Rule(OPERATOR, cpu("cpu1"))],
    "api:cpuserver-enter-maintenance": [Rule(OPERATOR, cpu("cpu2"), "post", ok=JOB_STARTED_API)],
    "api:cpuserver-leave-maintenance": [Rule(OPERATOR, cpu("cpu3"), "post", ok=JOB_STARTED_API)],
    "api:diskserver-list": [Rule(OPERATOR)],
    "api:diskserver-detail": [Rule(OPERATOR, cpu("disk1"))],
    "api:diskserver-leave-maintenance": [Rule(OPERATOR, cpu("disk3"), "post")],
    "api:tenant-list": [Rule(OPERATOR), Rule(OPERATOR, method="post", data={"slug": "initech"}, ok=(201,))],
    "api:tenant-detail": [Rule(OPERATOR, lambda w, _: {"slug": "acme"})],
    "api:tenant-quota": [Rule(OPERATOR, lambda w, _: {"slug": "acme"}, "patch", {"vms": 5})],
    "api:user-list": [Rule(OPERATOR)],
    "api:user-detail": [Rule(OPERATOR, lambda w, _: {"username": "alice"})],
    "api:me": [Rule(SIGNED_IN)],
    "api:image-list": [Rule(SIGNED_IN)],
    "api:image-detail": [Rule(TENANT, lambda w, whose: {"name": w.images[whose].name})],
    "api:network-list": [Rule(SIGNED_IN)],
    "api:network-detail": [Rule(OPERATOR, lambda w, _: {"name": "private"})],
    "api:verify": [Rule(OPERATOR, method="post", ok=JOB_STARTED_API)],
    # The schema and its viewers describe the API, they hold no data: public, like the login page.
    "api:schema": [Rule(PUBLIC)],
    "api:docs": [Rule(PUBLIC)],
    "api:redoc": [Rule(PUBLIC)],
}


def _url_names() -> set[str]:
    def walk(patterns: list, namespace: str | None) -> set[str]:
        names = set()
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                if pattern.app_name == "admin":  # Django's admin: staff only, its own login (tested below)
                    continue
                names |= walk(pattern.url_patterns, pattern.namespace or namespace)
            elif isinstance(pattern, URLPattern):
                assert pattern.name, f"URL {pattern.pattern} has no name: name it and give it an access rule"
                names.add(f"{namespace}:{pattern.name}" if namespace else pattern.name)
        return names

    return walk(get_resolver().url_patterns, None)


def _cases() -> list[tuple[str, int]]:
    rules = PAGE_RULES | API_RULES
    return [(name, i) for name in sorted(rules) for i in range(len(rules[name]))]


def test_every_url_has_an_access_rule():
    rules = PAGE_RULES | API_RULES
    missing = sorted(_url_names() - set(rules))
    assert not missing, f"URLs without an access rule in {__name__}: {missing}"
    stale = sorted(set(rules) - _url_names())
    assert not stale, f"access rules for URLs that no longer exist: {stale}"


def _request(client: Client, rule: Rule, url: str, w: World, whose: str, headers: dict[str, str]):
    data = dict(rule.data)
    if data.get("confirm_name") == "*":
        data["confirm_name"] = rule.args(w, whose)["name"]
    if rule.method == "get":
        return client.get(url, data, **headers)
    content_type = "application/json" if url.startswith("/api/") else "application/x-www-form-urlencoded"
    if content_type == "application/json":
        return getattr(client, rule.method)(url, data, content_type=content_type, **headers)
    from urllib.parse import urlencode

    return getattr(client, rule.method)(url, urlencode(data), content_type=content_type, **headers)


def _as(user: Any | None, api: bool) -> tuple[Client, dict[str, str]]:
    client = Client()
    if user is None:
        return client, {}
    if api:
        from api.tokens import current_token, issue_token

        if not hasattr(user, "_test_token") or current_token(user) is None:
            user._test_token = issue_token(user)
        return client, {"HTTP_AUTHORIZATION": f"Token {user._test_token}"}
    client.force_login(user)
    return client, {}


@pytest.mark.parametrize(("name", "index"), _cases())
def test_access(world, name, index, settings):
    rule = (PAGE_RULES | API_RULES)[name][index]
    api = name.startswith("api:")

    def url(whose: str) -> str:
        return reverse(name, kwargs=rule.args(world, whose))

    if rule.who == SCRAPER:
        settings.METRICS_TOKEN = "scraper-token-" + "x" * 32
        for user in (None, world.bob, world.alice, world.operator):
            client, headers = _as(user, api=False)
            refused = _request(client, rule, url("own"), world, "own", headers)
            assert refused.status_code == 401, f"{user} {rule.method} {url('own')}: {refused.status_code}"
        scraped = Client().get(url("own"), HTTP_AUTHORIZATION=f"Bearer {settings.METRICS_TOKEN}")
        assert scraped.status_code in rule.ok, f"the scraper {url('own')}: {scraped.status_code}"
        return
    client, headers = _as(None, api)
    anonymous = _request(client, rule, url("own"), world, "own", headers)
    if rule.who == PUBLIC:
        assert anonymous.status_code in rule.ok, f"anonymous {rule.method} {url('own')}: {anonymous.status_code}"
        return
    if api:
        assert anonymous.status_code == 401, f"anonymous {rule.method} {url('own')}: {anonymous.status_code}"
    else:
        assert anonymous.status_code == 302 and "/login/" in anonymous.url, f"anonymous {url('own')}"

    client, headers = _as(world.bob, api)
    if rule.who == TENANT:
        other = _request(client, rule, url("own"), world, "own", headers)  # acme's object, asked by globex's bob
        assert other.status_code == 404, f"another tenant's {rule.method} {url('own')}: {other.status_code}"
    elif rule.who == OPERATOR:
        refused = _request(client, rule, url("other"), world, "other", headers)  # even on bob's own VM
        assert refused.status_code == 404, f"tenant {rule.method} {url('other')}: {refused.status_code}"
    elif rule.who == OPERATOR_ACTION:
        hidden = _request(client, rule, url("own"), world, "own", headers)
        assert hidden.status_code == 404, f"another tenant's {rule.method} {url('own')}: {hidden.status_code}"
        refused = _request(client, rule, url("other"), world, "other", headers)
        assert refused.status_code == 403, f"tenant {rule.method} {url('other')}: {refused.status_code}"

    allowed = world.operator if rule.who in (OPERATOR, OPERATOR_ACTION) else world.alice
    client, headers = _as(allowed, api)
    response = _request(client, rule, url("own"), world, "own", headers)
    assert response.status_code in rule.ok, (
        f"{allowed.username} {rule.method} {url('own')}: {response.status_code} "
        f"{getattr(response, 'content', b'')[:300]!r}")


def test_the_admin_is_for_staff_only(world):
    assert Client().get("/admin/").status_code == 302
    client, _ = _as(world.alice, api=False)
    assert client.get("/admin/").status_code == 302  # to the admin's login: not staff
    client, _ = _as(world.operator, api=False)
    assert client.get("/admin/").status_code in (200, 302)


WS_RULES: dict[str, Rule] = {
    "ws/jobs/<int:job_id>/": Rule(TENANT, lambda w, whose: {"job_id": w.jobs[whose].pk}),
    "ws/vms/": Rule(SIGNED_IN),
    # Accepted, then the console opens (or says why not: libvirt's test driver has none).
    "ws/vms/<str:name>/console/serial/": Rule(TENANT, vm()),
    "ws/vms/<str:name>/console/vnc/": Rule(TENANT, vm()),
    "ws/hosts/": Rule(OPERATOR),
    "ws/incidents/": Rule(SIGNED_IN),
    "ws/incidents/<int:incident_id>/": Rule(TENANT, lambda w, whose: {"incident_id": w.incidents[whose].pk}),
}


def _ws_routes() -> set[str]:
    from xenaoe_panel.routing import websocket_urlpatterns

    return {str(p.pattern) for p in websocket_urlpatterns}


def test_every_websocket_route_has_an_access_rule():
    assert _ws_routes() == set(WS_RULES), f"websocket routes and rules differ: {_ws_routes() ^ set(WS_RULES)}"


def _ws_path(route: str, args: dict[str, Any]) -> str:
    import re

    return "/" + re.sub(r"<(?:\w+:)?(\w+)>", lambda m: str(args[m.group(1)]), route)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("route", sorted(WS_RULES))
def test_websocket_access(world, route):
    from asgiref.sync import async_to_sync
    from channels.testing import WebsocketCommunicator

    from xenaoe_panel.asgi import application

    rule = WS_RULES[route]

    def cookie(user: Any | None) -> list[tuple[bytes, bytes]]:
        headers = [(b"origin", b"http://127.0.0.1"), (b"host", b"127.0.0.1")]
        if user is not None:
            client, _ = _as(user, api=False)
            headers.append((b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode()))
        return headers

    async def connect(path: str, headers: list) -> tuple[bool, int | None]:
        communicator = WebsocketCommunicator(application, path, headers=headers)
        connected, code = await communicator.connect(timeout=5)
        if connected:
            await communicator.disconnect()
        return connected, code

    def attempt(user: Any | None, whose: str) -> tuple[bool, int | None]:
        return async_to_sync(connect)(_ws_path(route, rule.args(world, whose)), cookie(user))

    assert attempt(None, "own") == (False, 4401)
    if rule.who == TENANT:
        assert attempt(world.bob, "own") == (False, 4404)
    elif rule.who == OPERATOR:
        assert attempt(world.bob, "other") == (False, 4404)
    allowed = world.operator if rule.who == OPERATOR else world.alice
    assert attempt(allowed, "own")[0], f"{allowed.username} could not open {route}"
