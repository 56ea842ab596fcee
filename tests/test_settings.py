"""Which settings a site runs with: production's (xenaoe_panel/settings.py) know nothing of the lab;
the lab's (settings_lab.py: the demo, the tests, the benches) add its app, its commands and its paths.

Settings are read once per process, so each case asks a fresh `manage.py` or `python -c`."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# What the panel is made of: every package but the lab itself, the tests and the benches.
NOT_THE_PANEL = {"lab", "tests", "bench", ".venv", ".git", ".lab", ".run", "staticfiles"}
SHOW_SETTINGS = """
import json, django
django.setup()
from django.conf import settings
print(json.dumps({"apps": settings.INSTALLED_APPS, "lab_dir": str(getattr(settings, "LAB_DIR", "")),
                  "identity": str(settings.SSH_IDENTITY_FILE), "known_hosts": str(settings.SSH_KNOWN_HOSTS_FILE)}))
"""


def _env(settings_module: str) -> dict[str, str]:
    """This environment with the given settings and the defaults of every path asked about."""
    unset = {"XENAOE_LAB_DIR", "XENAOE_SSH_IDENTITY", "XENAOE_SSH_KNOWN_HOSTS"}
    return {**{k: v for k, v in os.environ.items() if k not in unset}, "DJANGO_SETTINGS_MODULE": settings_module}


def _settings(settings_module: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", SHOW_SETTINGS], cwd=REPO, env=_env(settings_module),
                          capture_output=True, text=True, timeout=60, check=True)
    return json.loads(proc.stdout)


def _help_lab(settings_module: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "manage.py", "help", "lab"], cwd=REPO, env=_env(settings_module),
                          capture_output=True, text=True, timeout=60)


def test_the_production_settings_have_no_lab_and_point_nowhere_into_the_checkout():
    production = _settings("xenaoe_panel.settings")
    assert "lab" not in production["apps"]
    assert production["lab_dir"] == ""
    assert production["identity"] == "/etc/xenaoe-panel/id_ed25519"
    assert production["known_hosts"] == "/etc/xenaoe-panel/known_hosts"
    result = _help_lab("xenaoe_panel.settings")
    assert result.returncode != 0 and "Unknown command: 'lab'" in result.stderr


def test_the_lab_settings_add_the_lab_app_its_command_and_its_ssh_key():
    lab = _settings("xenaoe_panel.settings_lab")
    assert lab["apps"][-1] == "lab"
    assert Path(lab["lab_dir"]) == REPO / ".lab"
    assert Path(lab["identity"]) == REPO / ".lab" / "ssh" / "id_ed25519"
    assert Path(lab["known_hosts"]) == REPO / ".lab" / "ssh" / "known_hosts"
    result = _help_lab("xenaoe_panel.settings_lab")
    assert result.returncode == 0 and result.stdout.startswith("usage: manage.py lab ")


def test_no_module_of_the_panel_imports_the_lab():
    offenders = []
    for path in REPO.rglob("*.py"):
        if path.relative_to(REPO).parts[0] in NOT_THE_PANEL:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                     else [])
            offenders += [f"{path.relative_to(REPO)}:{node.lineno}" for name in names if name.split(".")[0] == "lab"]
    assert offenders == []
