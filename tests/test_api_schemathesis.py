"""schemathesis against the live /api/schema/: a few hundred generated requests, as an operator and
as a tenant's user, through Daphne, and none of them may get a 500.

The examples are what the schema allows and more (schemathesis bends types and bounds), so this
finds the handlers that trust their input. Operations that queue jobs do queue them, on this run's
own queue, which no worker takes here.
"""
from __future__ import annotations

import json
import os

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

EXAMPLES_PER_OPERATION = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "8"))
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def world(django_db_setup, transactional_db):
    from django.contrib.auth import get_user_model

    from api.tokens import issue_token
    from hosts.models import CpuServer, DiskServer
    from tenants.services import add_user, create_tenant
    from vms.models import VirtualMachine

    for i in (1, 2):
        CpuServer.objects.create(name=f"cpu{i}", address=f"192.0.2.{20 + i}", libvirt_uri="test:///default",
                                 memory_mib=8192, vcpus=8)
        DiskServer.objects.create(name=f"disk{i}", address=f"192.0.2.{10 + i}", aoe_shelf=i, capacity_mib=100_000)
    acme = create_tenant("acme")
    VirtualMachine.objects.create(name="a1", vcpus=1, memory_mib=128, disk_mib=64, tenant=acme, state="running",
                                  cpu_server=CpuServer.objects.get(name="cpu1"))
    operator = get_user_model().objects.create_user("op", is_staff=True)
    alice = add_user(acme, "alice")
    return {who: issue_token(user) for who, user in (("operator", operator), ("tenant", alice))}


def _served_schema() -> dict:
    """The document /api/schema/ serves, built in-process at collection (schemathesis's lazy
    loading from a fixture does not run under this pytest); the test below checks that the live
    server serves the same one."""
    from drf_spectacular.generators import SchemaGenerator

    return SchemaGenerator().get_schema(request=None, public=True)


SCHEMA = _served_schema()
schema = schemathesis.openapi.from_dict(json.loads(json.dumps(SCHEMA, default=str)))


def test_the_live_server_serves_this_schema(web_server):
    import urllib.request

    with urllib.request.urlopen(f"{web_server}/api/schema/?format=json", timeout=30) as response:
        served = json.load(response)
    assert served["paths"].keys() == SCHEMA["paths"].keys()
    assert len(served["paths"]) >= 25


@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much,
                                 HealthCheck.too_slow])
def test_no_request_gets_a_server_error(case, world, web_server):
    for who, token in world.items():  # the same request as an operator and as a tenant's user
        response = case.call(base_url=web_server, headers={"Authorization": f"Token {token}"}, timeout=30)
        assert response.status_code < 500, (f"{who}: {case.method} {case.formatted_path}: {response.status_code}\n"
                                            f"{response.text[:2000]}")
