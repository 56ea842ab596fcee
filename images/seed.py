"""A VM's first-boot settings as a NoCloud seed: a small ISO 9660 image labelled CIDATA.

cloud-init reads `meta-data`, `user-data` and `network-config` from it (so imported cloud images
configure themselves); the panel's own images read `xenaoe.env` and `authorized_keys` with
images/guest/xenaoe-firstboot instead (no cloud-init: it costs a minute of boot under emulation).
Both come from one `SeedSettings`, so they cannot disagree.

The seed is made from the database each time the VM is placed on a CPU server (create, start,
migration, failover restart), so it never lives only where the VM first booted (docs/images.md).
"""
from __future__ import annotations

import io
import ipaddress
import json
from dataclasses import dataclass, field

import pycdlib

LABEL = "CIDATA"


@dataclass(frozen=True)
class NicSettings:
    mac: str
    address: str = ""  # "10.0.0.5/24"; empty: DHCP
    gateway: str = ""


@dataclass(frozen=True)
class SeedSettings:
    instance_id: str
    hostname: str
    login_user: str
    ssh_keys: tuple[str, ...] = ()
    password_hash: str = ""
    dns: tuple[str, ...] = ()
    nics: tuple[NicSettings, ...] = field(default_factory=tuple)


def _one_line(value: str, what: str) -> str:
    if any(c in value for c in "\n\r\0"):
        raise ValueError(f"{what} must be one line: {value!r}")
    return value


def xenaoe_env(settings: SeedSettings) -> str:
    lines = [f"INSTANCE_ID={settings.instance_id}", f"HOSTNAME={settings.hostname}",
             f"LOGIN_USER={settings.login_user}", f"DNS={' '.join(settings.dns)}", f"NICS={len(settings.nics)}"]
    if settings.password_hash:
        lines.append(f"PASSWORD_HASH={settings.password_hash}")
    for index, nic in enumerate(settings.nics):
        lines += [f"NIC{index}_MAC={nic.mac}", f"NIC{index}_ADDRESS={nic.address or 'dhcp'}",
                  f"NIC{index}_GATEWAY={nic.gateway}"]
    return "".join(_one_line(line, "a setting") + "\n" for line in lines)


def network_config(settings: SeedSettings) -> dict[str, object]:
    """cloud-init's network config, version 2."""
    ethernets: dict[str, object] = {}
    for index, nic in enumerate(settings.nics):
        entry: dict[str, object] = {"match": {"macaddress": nic.mac}, "set-name": f"eth{index}"}
        if nic.address:
            entry["addresses"] = [nic.address]
            if nic.gateway:
                version = ipaddress.ip_address(nic.gateway).version
                entry["routes"] = [{"to": "default" if version == 4 else "::/0", "via": nic.gateway}]
            if settings.dns:
                entry["nameservers"] = {"addresses": list(settings.dns)}
        else:
            entry["dhcp4"] = True
        ethernets[f"eth{index}"] = entry
    return {"version": 2, "ethernets": ethernets}


def user_data(settings: SeedSettings) -> str:
    user: dict[str, object] = {"name": settings.login_user, "groups": ["sudo"], "shell": "/bin/bash",
                               "sudo": "ALL=(ALL) NOPASSWD:ALL", "ssh_authorized_keys": list(settings.ssh_keys)}
    if settings.password_hash:
        user["passwd"] = settings.password_hash
        user["lock_passwd"] = False
    config = {"hostname": settings.hostname, "users": [user], "ssh_pwauth": False, "resize_rootfs": True}
    # JSON is YAML: no YAML writer needed, and no YAML quoting to get wrong.
    return "#cloud-config\n" + json.dumps(config, indent=2) + "\n"


def files(settings: SeedSettings) -> dict[str, bytes]:
    for key in settings.ssh_keys:
        _one_line(key, "an SSH key")
    meta = {"instance-id": settings.instance_id, "local-hostname": settings.hostname}
    return {
        "meta-data": (json.dumps(meta, indent=2) + "\n").encode(),
        "user-data": user_data(settings).encode(),
        "network-config": (json.dumps(network_config(settings), indent=2) + "\n").encode(),
        "xenaoe.env": xenaoe_env(settings).encode(),
        "authorized_keys": "".join(key + "\n" for key in settings.ssh_keys).encode(),
    }


def iso(settings: SeedSettings) -> bytes:
    """The seed as an ISO 9660 image (Rock Ridge names, so `meta-data` keeps its dash)."""
    image = pycdlib.PyCdlib()
    image.new(interchange_level=3, rock_ridge="1.09", joliet=3, vol_ident=LABEL)
    for index, (name, data) in enumerate(sorted(files(settings).items())):
        image.add_fp(io.BytesIO(data), len(data), f"/F{index}.;1", rr_name=name, joliet_path=f"/{name}")
    out = io.BytesIO()
    image.write_fp(out)
    image.close()
    return out.getvalue()
