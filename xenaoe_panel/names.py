"""The panel's names, one rule for all: VMs, CPU and disk servers, networks, tenants, and the job
filters that look them up. A DNS label (1-63 lower-case letters, digits and '-', starting with a
letter): a VM's name is its hostname, and every name reaches hosts as argv and in paths."""
from __future__ import annotations

import re

NAME = r"[a-z][a-z0-9-]{0,62}"
# \Z, not $: $ also matches before a final newline.
NAME_RE = re.compile(rf"\A{NAME}\Z")
# VM `web` is the libvirt domain `xa-web`: the panel's guests stand out among a host's domains.
DOMAIN_PREFIX = "xa-"
