"""Settings for the lab cluster (docs/lab.md): the production settings plus the lab app and its paths.

The lab app's commands create and destroy network namespaces, kill processes and cut links on this
machine (`manage.py lab up|down|kill|partition ...`): a real site must never have them, so
settings.py knows nothing of the lab and this module adds it. `make demo`, `make test` (and
pyproject.toml for pytest), `make chaos` and the benches run with
DJANGO_SETTINGS_MODULE=xenaoe_panel.settings_lab; everything else is the same environment variables.
"""
import os
from pathlib import Path

# The demo's and the tests' data in the checkout (git ignores .run/), read by settings.py below.
os.environ.setdefault("XENAOE_DATA_DIR", str(Path(__file__).resolve().parent.parent / ".run"))

from xenaoe_panel.env import env_bool, env_path  # noqa: E402
from xenaoe_panel.settings import *  # noqa: E402, F403
from xenaoe_panel.settings import BASE_DIR, INSTALLED_APPS  # noqa: E402

INSTALLED_APPS = [*INSTALLED_APPS, "lab"]

# Where the lab keeps its state, and where `lab up` writes the panel's key to its hosts and their
# host keys: the panel reaches the lab's hosts with these unless the environment says otherwise.
LAB_DIR = env_path("XENAOE_LAB_DIR", BASE_DIR / ".lab")
SSH_IDENTITY_FILE = env_path("XENAOE_SSH_IDENTITY", LAB_DIR / "ssh" / "id_ed25519")
SSH_KNOWN_HOSTS_FILE = env_path("XENAOE_SSH_KNOWN_HOSTS", LAB_DIR / "ssh" / "known_hosts")
# The lab's webhook receivers (the tests', a demo's) listen on this machine: tenants' webhooks may reach it.
NOTIFY_TENANT_WEBHOOKS_PRIVATE = env_bool("XENAOE_NOTIFY_TENANT_WEBHOOKS_PRIVATE", True)
