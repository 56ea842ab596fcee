"""Names and host addresses: what reaches a host, a shell or ssh's command line is refused unless
it is exactly what the pattern says (no trailing newline) and never an option ("-o...")."""
from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError

from drivers import hypervisors, ssh
from drivers.errors import DriverError
from ha.job_params import ReturnParams
from hosts.choices import Hypervisor
from hosts.models import CpuServer, DiskServer
from jobs.filtersets import HOST_PATTERN, VM_PATTERN
from tenants.services import create_tenant
from vms.models import VirtualMachine
from vms.services import VmRequest, validate_request

pytestmark = pytest.mark.django_db


def _cpu(**fields) -> CpuServer:
    return CpuServer(**({"name": "cpu1", "address": "192.0.2.21", "libvirt_uri": "qemu+ssh://root@192.0.2.21/system",
                         "memory_mib": 4096, "vcpus": 4} | fields))


@pytest.mark.parametrize("name", ["db1\n", "db1\r\n", "\ndb1"])
def test_a_vm_name_with_a_newline_is_refused(name):
    with pytest.raises(ValidationError) as err:
        validate_request(VmRequest(name=name, vcpus=1, memory_mib=256, disk_mib=100))
    assert "name" in err.value.message_dict


def test_the_cli_refuses_a_vm_name_with_a_trailing_newline():
    for i in (1, 2):
        CpuServer.objects.create(name=f"cpu{i}", address=f"192.0.2.{20 + i}", libvirt_uri="test:///default",
                                 memory_mib=4096, vcpus=4)
        DiskServer.objects.create(name=f"disk{i}", address=f"192.0.2.{10 + i}", aoe_shelf=i, capacity_mib=100_000)
    with pytest.raises(CommandError, match="VM name"):
        call_command("vm", "create", "db1\n", "--vcpus", "1", "--memory-mib", "256", "--disk-mib", "100")
    assert not VirtualMachine.objects.exists()
    call_command("vm", "create", "db1", "--vcpus", "1", "--memory-mib", "256", "--disk-mib", "100")
    assert list(VirtualMachine.objects.values_list("name", flat=True)) == ["db1"]


def test_tenant_and_host_names_with_a_trailing_newline_are_refused():
    with pytest.raises(ValidationError):
        create_tenant("acme\n")
    with pytest.raises(ValidationError) as err:
        _cpu(name="cpu1\n").full_clean()
    assert "name" in err.value.message_dict


def test_job_filter_patterns_refuse_a_name_with_a_trailing_newline():
    # The forms strip what they are given; the patterns must hold on their own (the API's filter).
    assert not VM_PATTERN.search("web1\n") and not HOST_PATTERN.search("cpu1\n") and VM_PATTERN.search("web*")
    with pytest.raises(ValidationError, match="is not a host's name"):  # nor a job's declared host
        ReturnParams(host="cpu1\n")


@pytest.mark.parametrize("address", ["192.0.2.21", "2001:db8::21", "cpu1", "cpu1.mgmt.example.org", "CPU-1.lan"])
def test_host_addresses_accept_ip_addresses_and_dns_names(address):
    _cpu(address=address, bmc_address=address).full_clean()
    DiskServer(name="disk1", address=address, aoe_shelf=1, capacity_mib=1000).full_clean()


@pytest.mark.parametrize("address", ["-oProxyCommand=touch /tmp/x", "-p", "cpu1 -v", "cpu1\n", "a..b", "user@cpu1",
                                     "-cpu1", "cpu1-", "", "256.1.1.1", "cpu_1", "[::1]"])
def test_host_addresses_refuse_options_and_anything_not_an_address(address):
    with pytest.raises(ValidationError) as err:
        _cpu(address=address, bmc_address=address or "-x").full_clean()
    assert "address" in err.value.message_dict and "bmc_address" in err.value.message_dict
    with pytest.raises(ValidationError) as err:
        DiskServer(name="disk1", address=address, aoe_shelf=1, capacity_mib=1000).full_clean()
    assert "address" in err.value.message_dict


@pytest.mark.parametrize("uri", ["qemu+ssh://root@-oProxyCommand=x/system", "qemu+ssh://-oProxyCommand=x/system",
                                 "qemu+ssh://root@cpu1/system\n", "qemu+ssh://root@cpu 1/system"])
def test_libvirt_uris_refuse_a_host_that_is_not_an_address(uri):
    with pytest.raises(ValidationError) as err:
        _cpu(libvirt_uri=uri).full_clean()
    assert "libvirt_uri" in err.value.message_dict


@pytest.mark.parametrize("uri", ["qemu+ssh://root@192.0.2.21/system", "qemu+ssh://root@[2001:db8::21]:2222/system",
                                 "xen+ssh://cpu1.lan/system", "qemu:///system", "test:///default",
                                 "qemu+tcp://cpu1:16509/system"])
def test_libvirt_uris_with_an_address_or_none_are_accepted(uri):
    _cpu(libvirt_uri=uri).full_clean()


def test_libvirts_libssh_transport_is_refused_for_libssh2_or_ssh():
    with pytest.raises(ValidationError) as err:
        _cpu(libvirt_uri="qemu+libssh://root@192.0.2.21/system?keyfile=/k&known_hosts=/kh").full_clean()
    assert "qemu+libssh2://" in str(err.value.message_dict["libvirt_uri"])
    _cpu(libvirt_uri="qemu+libssh2://root@192.0.2.21/system?keyfile=/k&known_hosts=/kh&known_hosts_verify=normal"
         ).full_clean()


def test_a_cpu_server_records_only_a_hypervisor_the_drivers_have_a_flavour_for():
    assert tuple(Hypervisor.values) == hypervisors.NAMES
    with pytest.raises(ValidationError) as err:
        _cpu(hypervisor="vmware").full_clean()
    assert "hypervisor" in err.value.message_dict


@pytest.mark.parametrize("user", ["-oProxyCommand=x", "root\n", "ro ot"])
def test_ssh_users_that_are_not_user_names_are_refused(user):
    with pytest.raises(ValidationError) as err:
        _cpu(ssh_user=user).full_clean()
    assert "ssh_user" in err.value.message_dict


def test_ssh_refuses_a_host_that_ssh_would_read_as_an_option(tmp_path: Path):
    """Defence in depth: even a row that skipped validation never becomes an ssh option on the
    panel's machine (here a ProxyCommand that would run locally)."""
    witness = tmp_path / "ran"
    control = Path(tempfile.mkdtemp(prefix="xa"))  # short: a socket path has at most 107 bytes
    target = ssh.SSHTarget(host=f"-oProxyCommand=touch {witness}", identity_file=tmp_path / "id",
                           known_hosts_file=tmp_path / "known_hosts", control_dir=control, connect_timeout=2)
    with pytest.raises(DriverError) as err:
        ssh.run(target, ["true"], timeout=10)
    assert err.value.permanent and "not a host address" in str(err.value)
    assert not witness.exists()


def test_ssh_puts_the_destination_after_the_end_of_options(tmp_path: Path):
    target = ssh.SSHTarget(host="cpu1.example.org", identity_file=tmp_path / "id",
                           known_hosts_file=tmp_path / "known_hosts", control_dir=tmp_path / "control")
    argv = ssh.command(target, ["echo", "hi"])
    assert argv[-3:] == ["--", "cpu1.example.org", "echo hi"]


@pytest.mark.parametrize("url, listed", [
    ("/jobs/?date_to=9999-12-31", True),
    ("/jobs/?date_from=0001-01-01&date_to=9999-12-31", True),
    ("/jobs/?date_from=9999-12-31", False),
    ("/api/jobs/?since=0001-01-01T00:00:00%2B01:00", True),
    ("/api/jobs/?since=0001-01-01T00:00:00-01:00", True),
    ("/api/jobs/?since=9999-12-31T23:59:59-01:00", False),
])
def test_dates_at_the_ends_of_the_calendar_filter_instead_of_failing(django_user_model, url, listed):
    from django.test import Client

    from jobs.services import start_job

    start_job("cluster.verify", target_name="cluster")
    client = Client()
    client.force_login(django_user_model.objects.create_user("op", is_staff=True))
    response = client.get(url)
    assert response.status_code == 200
    if url.startswith("/api/"):
        assert bool(response.json()["results"]) is listed
    else:
        assert (b'href="/jobs/?vm=cluster"' in response.content) is listed
