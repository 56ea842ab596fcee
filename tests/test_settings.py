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

from vms.migration import MAX_BANDWIDTH_MIB

REPO = Path(__file__).resolve().parent.parent
# What the panel is made of: every package but the lab itself, the tests and the benches.
NOT_THE_PANEL = {"lab", "tests", "bench", ".venv", ".git", ".lab", ".run", "staticfiles"}
SHOW_SETTINGS = """
import json, django
django.setup()
from django.conf import settings
print(json.dumps({"apps": settings.INSTALLED_APPS, "lab_dir": str(getattr(settings, "LAB_DIR", "")),
                  "identity": str(settings.SSH_IDENTITY_FILE), "known_hosts": str(settings.SSH_KNOWN_HOSTS_FILE),
                  "evacuate_max_mib_per_s": settings.EVACUATE_MAX_MIB_PER_S, "data_dir": str(settings.DATA_DIR),
                  "retention_days": {"jobs": settings.JOB_RETENTION_DAYS, "audit": settings.AUDIT_RETENTION_DAYS},
                  "kept": [str(settings.IMAGE_STORE), str(settings.JOB_ARCHIVE_DIR),
                           settings.CELERY_BEAT_SCHEDULE_FILENAME, str(settings.EMAIL_FILE_PATH)]}))
"""


def _env(settings_module: str, **overrides: str) -> dict[str, str]:
    """This environment with the given settings and the defaults of every setting asked about."""
    unset = {"XENAOE_LAB_DIR", "XENAOE_SSH_IDENTITY", "XENAOE_SSH_KNOWN_HOSTS", "XENAOE_EVACUATE_MAX_MIB_PER_S",
             "XENAOE_DATA_DIR", "XENAOE_IMAGE_STORE", "XENAOE_JOB_ARCHIVE_DIR", "EMAIL_FILE_PATH",
             "XENAOE_JOB_RETENTION_DAYS", "XENAOE_AUDIT_RETENTION_DAYS"}
    return {**{k: v for k, v in os.environ.items() if k not in unset}, "DJANGO_SETTINGS_MODULE": settings_module,
            **overrides}


def _run_settings(settings_module: str, **overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SHOW_SETTINGS], cwd=REPO, env=_env(settings_module, **overrides),
                          capture_output=True, text=True, timeout=60)


def _settings(settings_module: str, **overrides: str) -> dict:
    proc = _run_settings(settings_module, **overrides)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _help_lab(settings_module: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "manage.py", "help", "lab"], cwd=REPO, env=_env(settings_module),
                          capture_output=True, text=True, timeout=60)


def test_the_production_settings_have_no_lab_and_point_nowhere_into_the_checkout():
    # A key given: without one, production settings would make one in /var/lib/xenaoe-panel here.
    production = _settings("xenaoe_panel.settings", SECRET_KEY="k" * 50)
    assert "lab" not in production["apps"]
    assert production["lab_dir"] == ""
    assert production["identity"] == "/etc/xenaoe-panel/id_ed25519"
    assert production["known_hosts"] == "/etc/xenaoe-panel/known_hosts"
    assert production["data_dir"] == "/var/lib/xenaoe-panel"
    assert all(path.startswith("/var/lib/xenaoe-panel/") for path in production["kept"]), production["kept"]
    assert production["evacuate_max_mib_per_s"] is None
    result = _help_lab("xenaoe_panel.settings")
    assert result.returncode != 0 and "Unknown command: 'lab'" in result.stderr


def test_the_lab_settings_add_the_lab_app_its_command_and_its_ssh_key():
    lab = _settings("xenaoe_panel.settings_lab")
    assert lab["apps"][-1] == "lab"
    assert Path(lab["lab_dir"]) == REPO / ".lab"
    assert Path(lab["identity"]) == REPO / ".lab" / "ssh" / "id_ed25519"
    assert Path(lab["known_hosts"]) == REPO / ".lab" / "ssh" / "known_hosts"
    assert Path(lab["data_dir"]) == REPO / ".run"
    assert all(Path(path).is_relative_to(REPO / ".run") for path in lab["kept"]), lab["kept"]
    result = _help_lab("xenaoe_panel.settings_lab")
    assert result.returncode == 0 and result.stdout.startswith("usage: manage.py lab ")


def test_without_a_key_production_makes_one_in_its_data_directory_or_says_why_it_cannot(tmp_path):
    data = tmp_path / "data"
    first = _settings("xenaoe_panel.settings", XENAOE_DATA_DIR=str(data), SECRET_KEY="")
    assert first["data_dir"] == str(data)
    key = data / "secret_key"
    assert len(key.read_text().strip()) >= 50 and key.stat().st_mode & 0o777 == 0o600
    made = key.read_text()
    _settings("xenaoe_panel.settings", XENAOE_DATA_DIR=str(data), SECRET_KEY="")
    assert key.read_text() == made  # kept, not made again: sessions survive a restart
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    proc = _run_settings("xenaoe_panel.settings", XENAOE_DATA_DIR=str(blocked / "data"), SECRET_KEY="")
    assert proc.returncode != 0
    assert "cannot be made or read" in proc.stderr and "SECRET_KEY_FILE" in proc.stderr


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


def _read_at_import(tree: ast.Module) -> list[ast.AST]:
    """The nodes of a module that run when it is imported: its statements and class bodies, and the
    default values and decorators of its functions, not the functions' bodies."""
    found: list[ast.AST] = []
    pending: list[ast.AST] = [tree]
    while pending:
        node = pending.pop()
        found.append(node)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            pending += [d for d in (*node.args.defaults, *node.args.kw_defaults) if d is not None]
            pending += [] if isinstance(node, ast.Lambda) else node.decorator_list
        else:
            pending += ast.iter_child_nodes(node)
    return found


def test_settings_are_read_where_used_with_their_one_default_in_settings_py():
    """A copy taken at import (`TIMEOUT = settings.X`, a default argument, a class attribute) keeps its
    value when a test or a site changes the setting, and `getattr(settings, "X", default)` is a second
    default that drifts from settings.py's. AUTH_USER_MODEL is Django's own: models name it at import."""
    offenders = []
    for path in REPO.rglob("*.py"):
        where = path.relative_to(REPO)
        if where.parts[0] in NOT_THE_PANEL - {"lab"} or "migrations" in where.parts or where.name.startswith(
                "settings"):
            continue
        tree = ast.parse(path.read_text(), str(path))
        offenders += [f"{where}:{node.lineno} reads settings.{node.attr} at import" for node in _read_at_import(tree)
                      if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                      and node.value.id == "settings" and node.attr != "AUTH_USER_MODEL"]
        offenders += [f"{where}:{node.lineno} {node.func.id}(settings, ...)" for node in ast.walk(tree)
                      if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                      and node.func.id in ("getattr", "hasattr") and node.args
                      and isinstance(node.args[0], ast.Name) and node.args[0].id == "settings"]
    assert offenders == []


def test_the_evacuation_bandwidth_cap_takes_what_a_migration_takes_and_refuses_more():
    assert _settings("xenaoe_panel.settings", XENAOE_EVACUATE_MAX_MIB_PER_S="")["evacuate_max_mib_per_s"] is None
    assert _settings("xenaoe_panel.settings", XENAOE_EVACUATE_MAX_MIB_PER_S=str(MAX_BANDWIDTH_MIB))[
        "evacuate_max_mib_per_s"] == MAX_BANDWIDTH_MIB
    for bad in ("0", str(MAX_BANDWIDTH_MIB + 1), "fast"):
        proc = _run_settings("xenaoe_panel.settings", XENAOE_EVACUATE_MAX_MIB_PER_S=bad)
        assert proc.returncode != 0 and f"XENAOE_EVACUATE_MAX_MIB_PER_S={bad}" in proc.stderr.replace("'", "")


def test_the_audit_log_has_a_retention_of_its_own_a_year_and_more_unless_told():
    key = {"SECRET_KEY": "k" * 50}
    assert _settings("xenaoe_panel.settings", **key)["retention_days"] == {"jobs": 90, "audit": 400}
    assert _settings("xenaoe_panel.settings", **key, XENAOE_AUDIT_RETENTION_DAYS="0")["retention_days"] == {
        "jobs": 90, "audit": 0}  # kept for ever
    assert _settings("xenaoe_panel.settings", **key, XENAOE_AUDIT_RETENTION_DAYS="3650",
                     XENAOE_JOB_RETENTION_DAYS="30")["retention_days"] == {"jobs": 30, "audit": 3650}
    for bad in ("-1", "a year"):
        proc = _run_settings("xenaoe_panel.settings", **key, XENAOE_AUDIT_RETENTION_DAYS=bad)
        assert proc.returncode != 0 and f"XENAOE_AUDIT_RETENTION_DAYS={bad}" in proc.stderr.replace("'", "")


def test_the_web_server_keeps_what_it_loaded_at_start_out_of_full_garbage_collections():
    """xenaoe_panel/asgi.py freezes what Django and the apps loaded (gc.freeze): a full collection
    walked those ~150,000 objects in the middle of a request, 60-110 ms at a site's scale."""
    code = "import gc, xenaoe_panel.asgi; print(gc.get_freeze_count())"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env("xenaoe_panel.settings_lab"),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) > 50_000
