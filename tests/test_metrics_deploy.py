"""What deploy/ ships for metrics, against the panel's real output: the Grafana dashboard and the alerts
ask only for metrics /metrics exposes, their PromQL parses (promtool), and Debian's Prometheus, run
with deploy/prometheus.yml, scrapes a running panel and evaluates the alerts without an error."""
from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from django.core.cache import cache
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from metrics import cycle_time
from tests.test_metrics import TOKEN, scrape, site

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
DASHBOARD = DEPLOY / "grafana" / "xenaoe-panel.json"
ALERTS = DEPLOY / "prometheus-alerts.yml"
# Grafana's variables, as a query would run with them.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$vm": "web"}


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    queries += [variable["definition"] for variable in dashboard["templating"]["list"] if "definition" in variable]
    return queries


def alert_queries() -> list[str]:
    return [rule["expr"] for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


@pytest.fixture
def metrics_on(settings):
    settings.METRICS_TOKEN = TOKEN
    settings.VM_STATS_INTERVAL_S = 60
    yield
    cache.delete(cycle_time.CACHE_KEY)  # site() records the monitor's cycles


@pytest.mark.django_db
def test_the_dashboard_and_the_alerts_ask_only_for_what_the_panel_exposes(metrics_on):
    site(timezone.now())
    families = list(text_string_to_metric_families(scrape().content.decode()))
    # A family is listed even without a sample (a figure no guest reported): a name the panel has.
    exposed = {family.name for family in families} | {s.name for family in families for s in family.samples}
    asked = {name for query in dashboard_queries() + alert_queries() for name in re.findall(r"\bxenaoe_\w+", query)}
    assert asked and asked <= exposed, f"not exposed: {sorted(asked - exposed)}"
    # Every panel is drawn from the data source the dashboard asks for on import.
    dashboard = json.loads(DASHBOARD.read_text())
    assert {p["datasource"]["uid"] for p in dashboard["panels"] if "datasource" in p} == {"${datasource}"}


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian's prometheus package) not installed")
def test_every_query_parses(tmp_path):
    def expanded(query: str) -> str:
        for variable, value in GRAFANA_VARIABLES.items():
            query = query.replace(variable, value)
        return query

    # label_values() is Grafana's, not PromQL: its argument is.
    queries = [re.sub(r"^label_values\((\w+), \w+\)$", r"\1", expanded(q)) for q in dashboard_queries()]
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"xenaoe:dashboard_query_{i}", "expr": query} for i, query in enumerate(queries)]}]}
    (tmp_path / "dashboard.yml").write_text(yaml.safe_dump(rules))
    for path in (tmp_path / "dashboard.yml", ALERTS):
        checked = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
        assert checked.returncode == 0, checked.stdout + checked.stderr


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - a local Prometheus of the test's
        return json.load(response)


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus (Debian's package) not installed")
@pytest.mark.django_db(transaction=True)
def test_prometheus_scrapes_the_panel_with_the_shipped_configuration(live_server, metrics_on, tmp_path):
    site(timezone.now())
    token = tmp_path / "xenaoe-metrics-token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    job = config["scrape_configs"][0]
    job.update(scheme="http", scrape_timeout="1s")  # the test's server: plain HTTP, on the loopback
    job["authorization"]["credentials_file"] = str(token)
    job["static_configs"] = [{"targets": [live_server.url.removeprefix("http://")]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    shutil.copy(ALERTS, tmp_path / ALERTS.name)
    port = _free_port()
    log = tmp_path / "prometheus.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"], stdout=out, stderr=subprocess.STDOUT)
    api = f"http://127.0.0.1:{port}/api/v1"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            try:
                targets = _get(f"{api}/targets")["data"]["activeTargets"]
                groups = _get(f"{api}/rules")["data"]["groups"]
            except OSError:
                targets, groups = [], []
            scraped = targets and targets[0]["health"] == "up"
            # A rule not evaluated yet was last evaluated at Go's zero time.
            evaluated = groups and not any(rule["lastEvaluation"].startswith("0001") for rule in groups[0]["rules"])
            if scraped and evaluated:
                break
            time.sleep(0.3)
        assert targets[0]["lastError"] == ""
        assert [rule["health"] for rule in groups[0]["rules"]] == ["ok"] * len(alert_queries())
        found = _get(f"{api}/query?query=xenaoe_cpu_server_memory_bytes")["data"]["result"]
        assert {(r["metric"]["host"], r["value"][1]) for r in found} == {("cpu1", str(8192 * 1024 * 1024)),
                                                                         ("cpu2", str(4096 * 1024 * 1024))}
    finally:
        server.terminate()
        server.wait(10)
