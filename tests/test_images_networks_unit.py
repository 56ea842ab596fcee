"""VMs from images on networks, without hosts: what creation checks and reserves (images, networks,
MACs, addresses, keys, passwords), and what it gives the guest (the seed, the domain XML). Bad input
gets a clear error and leaves nothing behind."""
from __future__ import annotations

import json
import subprocess
import threading
import xml.etree.ElementTree as ET

import pycdlib
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from django.core.exceptions import ValidationError
from django.db import close_old_connections

from drivers import hypervisor
from hosts.models import CpuServer, DiskServer
from images import seed
from images.choices import ImageState
from images.models import Image
from jobs.models import Job
from networks.models import Network, Nic
from networks.services import NetworkRequest, create_network, random_mac
from sshkeys.validation import parse_key, parse_keys
from storage.models import AoEExport
from vms import guest_setup
from vms.guest_setup import domain_spec
from vms.models import VirtualMachine
from vms.passwords import generate_password, hash_password, sha512_crypt
from vms.services import VmRequest, create_vm

pytestmark = pytest.mark.django_db


def _public_key(kind: str = "ed25519", comment: str = "alice@laptop") -> str:
    key = ed25519.Ed25519PrivateKey.generate() if kind == "ed25519" else rsa.generate_private_key(65537, 1024)
    line = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return f"{line} {comment}"


@pytest.fixture
def site():
    for i in (1, 2):
        CpuServer.objects.create(name=f"cpu{i}", address=f"192.0.2.{20 + i}", libvirt_uri="test:///default",
                                 memory_mib=4096, vcpus=4)
        DiskServer.objects.create(name=f"disk{i}", address=f"192.0.2.{10 + i}", aoe_shelf=i, capacity_mib=100_000)
    image = Image.objects.create(name="debian-12", os_name="Debian", os_version="12", size_mib=640, sha256="a" * 64,
                                 kernel_version="6.1.0", kernel_sha256="b" * 64, initrd_sha256="c" * 64,
                                 login_user="debian", state=ImageState.READY, is_default=True)
    network = create_network(NetworkRequest(name="lab", bridge="br-guest", cidr="10.214.0.0/24",
                                            gateway="10.214.0.1", pool="10.214.0.100-10.214.0.102", dns="10.214.0.1"))
    return image, network


def _counts() -> tuple[int, ...]:
    return (VirtualMachine.objects.count(), AoEExport.objects.count(), Nic.objects.count(), Job.objects.count())


def _request(**overrides) -> VmRequest:
    return VmRequest(**({"name": "web1", "vcpus": 1, "memory_mib": 256, "disk_mib": 1024} | overrides))


def test_a_vm_gets_the_default_image_a_nic_on_the_default_network_and_the_lowest_free_address(site):
    image, network = site
    key = _public_key()
    create_vm(_request(ssh_keys=(key,), password="correct horse battery"))
    vm = VirtualMachine.objects.get(name="web1")
    assert vm.image == image
    assert vm.ssh_key_list == [key]
    assert sha512_crypt("correct horse battery", vm.password_hash.split("$")[2]) == vm.password_hash
    nic = vm.nics.get()
    assert (nic.network, nic.ip, nic.index) == (network, "10.214.0.100", 0)
    assert nic.mac.startswith("02:a0:e0:") and len(nic.mac) == 17
    job = Job.objects.get(vm=vm)
    assert job.params["image"] == "debian-12"
    assert job.params["nics"] == [{"network": "lab", "mac": nic.mac, "ip": "10.214.0.100"}]
    assert "correct horse" not in json.dumps(job.params)  # the password is never in the job


def test_an_address_comes_back_to_the_pool_when_its_vm_goes(site):
    create_vm(_request(name="a"))
    create_vm(_request(name="b"))
    VirtualMachine.objects.get(name="a").delete()
    create_vm(_request(name="c"))
    assert Nic.objects.get(vm__name="c").ip == "10.214.0.100"


@pytest.mark.parametrize(
    ("overrides", "field", "text"),
    [
        ({"image": "windows-95"}, "image", "no image named 'windows-95'"),
        ({"networks": ("dmz",)}, "network", "no network named 'dmz'"),
        ({"disk_mib": 600}, "disk_mib", "debian-12 needs a disk of at least 656 MiB"),
        ({"ssh_keys": ("ssh-ed25519 not-base64!",)}, "ssh_keys", "malformed ssh-ed25519 key"),
        ({"ssh_keys": ("command=\"rm -rf /\" ssh-ed25519 AAAA",)}, "ssh_keys", "not an OpenSSH public key"),
        ({"password": "short"}, "password", "12 to 128 characters"),
    ],
)
def test_bad_input_gets_a_clear_error_and_creates_nothing(site, overrides, field, text):
    before = _counts()
    with pytest.raises(ValidationError) as err:
        create_vm(_request(**overrides))
    assert text in " ".join(err.value.message_dict[field])
    assert _counts() == before


def test_a_full_pool_refuses_and_rolls_back_everything(site):
    for name in ("a", "b", "c"):
        create_vm(_request(name=name))
    before = _counts()
    with pytest.raises(ValidationError) as err:
        create_vm(_request(name="d"))
    assert "lab has no free address left in its pool 10.214.0.100-10.214.0.102" in err.value.messages[0]
    assert _counts() == before  # no VM, no exports, no NIC: the whole reservation rolled back


def test_an_image_not_ready_yet_is_refused(site):
    image, _ = site
    Image.objects.filter(pk=image.pk).update(state=ImageState.PENDING)
    with pytest.raises(ValidationError, match="not ready"):
        create_vm(_request())


@pytest.mark.django_db(transaction=True)
def test_concurrent_creates_never_share_an_address(site):
    errors: list[Exception] = []

    def make(name: str) -> None:
        try:
            create_vm(_request(name=name))
        except ValidationError as exc:
            errors.append(exc)
        finally:
            close_old_connections()

    threads = [threading.Thread(target=make, args=(f"vm{i}",)) for i in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    addresses = list(Nic.objects.values_list("ip", flat=True))
    assert len(addresses) == len(set(addresses)) == 3  # the pool holds three
    assert len(errors) == 2 and all("no free address" in e.messages[0] for e in errors)


@pytest.mark.parametrize(
    ("request_", "field", "text"),
    [
        (NetworkRequest(name="n", bridge="br0", cidr="10.0.0.0/33"), "cidr", "not a subnet"),
        (NetworkRequest(name="n", bridge="br0", cidr="10.0.0.1/24"), "cidr", "has host bits set"),
        (NetworkRequest(name="n", bridge="br0", cidr="10.0.0.0/24", pool="10.0.1.5-10.0.1.9"), "pool_start",
         "is not in 10.0.0.0/24"),
        (NetworkRequest(name="n", bridge="br0", cidr="10.0.0.0/24", pool="10.0.0.9-10.0.0.5"), "pool_end",
         "ends (10.0.0.5) before it starts"),
        (NetworkRequest(name="n", bridge="br0", cidr="10.0.0.0/24", gateway="10.0.0.6", pool="10.0.0.5-10.0.0.9"),
         "gateway", "inside the pool"),
        (NetworkRequest(name="n", bridge="-oProxy", cidr="10.0.0.0/24"), "bridge", "Not a bridge name"),
        (NetworkRequest(name="n", bridge="br0", cidr="10.0.0.0/24", vlan=5000), "vlan", "4094"),
        (NetworkRequest(name="N!", bridge="br0", cidr="10.0.0.0/24"), "name", "lower-case"),
    ],
)
def test_a_bad_network_is_refused_and_not_created(request_, field, text):
    with pytest.raises(ValidationError) as err:
        create_network(request_)
    assert text in " ".join(err.value.message_dict[field])
    assert not Network.objects.exists()


def test_the_pool_defaults_to_the_addresses_after_the_gateway():
    network = create_network(NetworkRequest(name="n", bridge="br0", cidr="192.0.2.0/28", gateway="192.0.2.1"))
    assert (network.pool_start, network.pool_end, network.pool_size) == ("192.0.2.2", "192.0.2.14", 13)
    assert network.is_default  # the first network is the default


def test_ssh_keys_are_parsed_not_trusted():
    key = _public_key(comment="bob@desk")
    parsed = parse_key(key)
    assert parsed.comment == "bob@desk" and parsed.fingerprint.startswith("SHA256:")
    fingerprint = subprocess.run(["ssh-keygen", "-lf", "-"], input=key, capture_output=True, text=True, check=True)
    assert parsed.fingerprint in fingerprint.stdout  # the same fingerprint ssh-keygen prints
    with pytest.raises(ValidationError, match="too weak"):
        parse_key(_public_key("rsa"))
    with pytest.raises(ValidationError, match="one line"):
        parse_key(key + "\nssh-ed25519 AAAA")
    assert [k.line for k in parse_keys(f"# mine\n\n{key}\n")] == [key]


def test_the_password_hash_is_what_openssl_and_shadow_expect():
    password = generate_password()
    assert len(password) >= 12
    hashed = hash_password(password)
    salt = hashed.split("$")[2]
    openssl = subprocess.run(["openssl", "passwd", "-6", "-salt", salt, "-stdin"], input=password,
                             capture_output=True, text=True, check=True)
    assert openssl.stdout.strip() == hashed


def test_the_seed_carries_the_settings_for_both_cloud_init_and_the_panels_agent(site, tmp_path):
    create_vm(_request(ssh_keys=(_public_key(),), password="correct horse battery"))
    vm = VirtualMachine.objects.get(name="web1")
    settings = guest_setup.seed_settings(vm)
    files = seed.files(settings)
    env = dict(line.split("=", 1) for line in files["xenaoe.env"].decode().splitlines())
    nic = vm.nics.get()
    assert env["HOSTNAME"] == "web1" and env["LOGIN_USER"] == "debian"
    assert env["NIC0_MAC"] == nic.mac and env["NIC0_ADDRESS"] == "10.214.0.100/24"
    assert env["NIC0_GATEWAY"] == "10.214.0.1" and env["DNS"] == "10.214.0.1"
    assert env["PASSWORD_HASH"] == vm.password_hash
    assert files["authorized_keys"].decode().splitlines() == vm.ssh_key_list
    network = json.loads(files["network-config"])
    assert network["ethernets"]["eth0"]["addresses"] == ["10.214.0.100/24"]
    assert files["user-data"].startswith(b"#cloud-config\n")
    assert json.loads(files["user-data"].split(b"\n", 1)[1])["users"][0]["ssh_authorized_keys"] == vm.ssh_key_list
    iso = tmp_path / "seed.iso"
    iso.write_bytes(seed.iso(settings))
    label = subprocess.run(["blkid", "-p", "-o", "value", "-s", "LABEL", str(iso)], capture_output=True, text=True,
                           check=False)
    assert label.stdout.strip() == "CIDATA"  # what cloud-init and xenaoe-firstboot look for
    reader = pycdlib.PyCdlib()
    reader.open(str(iso))
    names = {child.rock_ridge.name().decode() for child in reader.list_children(rr_path="/") if child.is_file()}
    reader.close()
    assert names == set(files)


def test_a_setting_with_a_newline_cannot_reach_the_guest():
    with pytest.raises(ValueError, match="one line"):
        seed.xenaoe_env(seed.SeedSettings(instance_id="x", hostname="a\nNICS=9", login_user="debian"))


def test_the_domain_boots_the_images_kernel_with_the_array_and_has_its_nic_and_seed(site):
    create_vm(_request())
    vm = VirtualMachine.objects.select_related("cpu_server", "image").get(name="web1")
    legs = list(AoEExport.objects.filter(mirror__vm=vm).order_by("leg"))
    root = ET.fromstring(hypervisor.domain_xml(domain_spec(vm, legs)))  # noqa: S314 - our own XML
    assert root.findtext("os/kernel") == f"{vm.image.boot_dir}/vmlinuz"
    cmdline = root.findtext("os/cmdline")
    assert f"xenaoe.md={vm.mirror.md_uuid_mdadm}" in cmdline and "xenaoe.md_create=1" in cmdline
    disks = root.findall("devices/disk")
    assert [d.findtext("serial") for d in disks] == ["xenaoe-leg0", "xenaoe-leg1", "xenaoe-seed"]
    assert disks[2].find("readonly") is not None and disks[2].find("source").get("file").endswith("xa-web1.iso")
    interface = root.find("devices/interface")
    assert interface.get("type") == "bridge" and interface.find("source").get("bridge") == "br-guest"
    assert interface.find("mac").get("address") == vm.nics.get().mac
    vm.mirror.md_created = True
    vm.mirror.save()
    vm = VirtualMachine.objects.select_related("cpu_server", "image").get(name="web1")
    assert "md_create" not in hypervisor.domain_xml(domain_spec(vm, legs))  # once made, never made again


def test_open_vswitch_networks_tag_the_vlan_linux_bridges_do_not():
    spec = hypervisor.DomainSpec(name="x", uuid="12345678-1234-1234-1234-123456789abc", vcpus=1, memory_mib=64,
                                 disks=("/dev/etherd/e1.0",), hypervisor="kvm",
                                 nics=(hypervisor.NicSpec("02:a0:e0:00:00:01", "br-v10", 10, openvswitch=True),
                                       hypervisor.NicSpec("02:a0:e0:00:00:02", "br-v20", 20)))
    interfaces = ET.fromstring(hypervisor.domain_xml(spec)).findall("devices/interface")  # noqa: S314
    assert interfaces[0].find("vlan/tag").get("id") == "10"
    assert interfaces[0].find("virtualport").get("type") == "openvswitch"
    assert interfaces[1].find("vlan") is None  # a Linux bridge carries one VLAN: the bridge is the VLAN's
    with pytest.raises(Exception, match="bad MAC"):
        hypervisor.domain_xml(spec.__class__(**{**spec.__dict__, "nics": (hypervisor.NicSpec("zz", "br0"),)}))


def test_mac_addresses_stay_in_the_panels_prefix():
    macs = {random_mac() for _ in range(200)}
    assert all(m.startswith("02:a0:e0:") for m in macs)
    assert all(int(m.split(":")[0], 16) & 0b10 for m in macs)  # locally administered
    assert len(macs) > 190


def test_a_tenant_uses_only_the_images_and_networks_published_to_it(site):
    from images.services import publish, visible_images
    from networks.services import publish_network, usable_networks
    from tenants.services import add_user, create_tenant

    alice = add_user(create_tenant("acme"), "alice", password="alice-password-1")
    bob = add_user(create_tenant("globex"), "bob", password="bob-password-1")
    publish("debian-12", public=False, tenants=["acme"])
    publish_network("lab", public=False, tenants=["acme"])
    assert list(visible_images(alice)) == [Image.objects.get()] and not visible_images(bob).exists()
    assert usable_networks(alice).count() == 1 and not usable_networks(bob).exists()
    with pytest.raises(ValidationError, match="no tenant named initech"):
        publish_network("lab", public=False, tenants=["initech"])
    assert usable_networks(alice).count() == 1  # unchanged
    with pytest.raises(ValidationError) as err:  # bob's tenant may create VMs, but has no image here
        create_vm(_request(name="b1", tenant="globex", image="debian-12"), user=bob)
    assert "no image named 'debian-12'" in err.value.message_dict["image"][0]
