"""Shared fixtures: the database (PostgreSQL), a real Celery worker, the lab cluster, a web server.

The worker and the web server are separate processes started against pytest-django's test
database, on a queue and channel prefix of this run's own, so that a demo running beside the tests
never takes their jobs.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _is_root() -> bool:
    return os.geteuid() == 0


@pytest.fixture(scope="session")
def lab_cluster() -> Iterator[object]:
    """The lab cluster, up for the whole session; taken down at the end if this run started it."""
    if not _is_root():
        pytest.skip("the lab cluster needs root (network namespaces)")
    from lab import cluster

    already_up = bool(cluster.status().hosts)
    status = cluster.up()
    yield status
    if not already_up:
        cluster.down()


def _child_env(database_name: str) -> dict[str, str]:
    import dj_database_url

    url = os.environ["DATABASE_URL"]
    parsed = dj_database_url.parse(url)
    env = dict(os.environ)
    env["DATABASE_URL"] = url.rsplit("/", 1)[0] + "/" + database_name if parsed["NAME"] else url
    env["DJANGO_SETTINGS_MODULE"] = "xenaoe_panel.settings_lab"
    return env


def _wait_for(predicate, timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    detail = log.read_text()[-3000:] if log and log.exists() else ""
    raise RuntimeError(f"{what} did not come up within {timeout:g} s\n{detail}")


@pytest.fixture(scope="session")
def celery_worker_process(django_db_setup, django_db_blocker, tmp_path_factory) -> Iterator[subprocess.Popen]:
    """A real `celery -A xenaoe_panel worker` on the test database, consuming both queues."""
    from django.conf import settings

    log = tmp_path_factory.mktemp("worker") / "worker.log"
    env = _child_env(settings.DATABASES["default"]["NAME"])
    # One worker for both of this run's queues (jobs/queues.py: the default one and HA's).
    queues = f"{settings.CELERY_TASK_DEFAULT_QUEUE},{settings.CELERY_HA_QUEUE}"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "xenaoe_panel", "worker", "-P", "threads", "-c", "6",
             "--loglevel=INFO", "-n", f"test-{os.getpid()}@%h", "-Q", queues],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    from jobs.services import WorkerUnavailable, check_workers

    def answers() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            return check_workers(timeout=0.5) > 0
        except WorkerUnavailable:
            return False

    _wait_for(answers, 30, "the Celery worker", log)
    yield proc
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def web_server(django_db_setup, tmp_path_factory) -> Iterator[str]:
    """Daphne serving the ASGI app (pages and websockets) on the test database; yields its URL."""
    from django.conf import settings

    port = _free_port()
    log = tmp_path_factory.mktemp("web") / "web.log"
    env = _child_env(settings.DATABASES["default"]["NAME"])
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "xenaoe_panel.asgi:application"],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
        )

    def listening() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"daphne exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    _wait_for(listening, 30, "daphne", log)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture
def monitor_process(lab_hosts, tmp_path) -> Iterator[Path]:
    """`manage.py monitor` as its own process on the test database, checking every second; yields
    its log. Its queues are this test's (the environment at the time it starts)."""
    from django.conf import settings

    log = tmp_path / "monitor.log"
    env = _child_env(settings.DATABASES["default"]["NAME"])
    env["XENAOE_MONITOR_INTERVAL_S"] = "1"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "manage.py", "monitor"], cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    yield log
    proc.terminate()
    proc.wait(timeout=20)


@pytest.fixture
def lab_hosts(lab_cluster, transactional_db):
    """The lab's hosts registered in the (flushed after each test) test database."""
    from hosts.models import CpuServer, DiskServer
    from lab import register

    register.register_hosts(lab_cluster)
    hosts = {"cpu": list(CpuServer.objects.order_by("name")), "disk": list(DiskServer.objects.order_by("name"))}
    register.clear_guests(hosts["cpu"], hosts["disk"])
    return hosts


@pytest.fixture
def operator(transactional_db):
    from django.contrib.auth import get_user_model

    return get_user_model().objects.create_user("op", password="op-password-1", is_staff=True, is_superuser=True)


@pytest.fixture
def default_image(lab_hosts, celery_worker_process):
    """The debian-12 image (built once per recipe, cached across runs), registered and on both disk
    servers (sent once: a copy already there is only checked against its checksum)."""
    from django.conf import settings

    from images import build
    from images.models import Image
    from images.services import register_built
    from lab import register
    from tests.integration.on_the_hosts import succeeded

    recipe = build.RECIPES["debian-12"]
    built = build.build(recipe, Path(settings.IMAGE_BUILD_CACHE), lambda percent, message: print(percent, message))
    register.register_guest_network()
    succeeded(register_built(recipe, built, name="debian-12", source="test", make_default=True))
    return Image.objects.get(name="debian-12")


@pytest.fixture
def installer_image(lab_hosts, celery_worker_process):
    """The lab's installer ISO (lab/guests/installer_iso.py, cached), imported as the image
    `lab-installer` the way an operator imports an ISO: copied to both disk servers, served there."""
    import tempfile

    from django.conf import settings

    from images import importer
    from images.models import Image
    from images.services import register_imported
    from lab.guests import installer_iso
    from tests.integration.on_the_hosts import succeeded

    path = installer_iso.build(Path(settings.IMAGE_BUILD_CACHE))
    scratch = Path(settings.IMAGE_STORE) / "imports"
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch) as work:
        found = importer.import_file(path, Path(work), lambda percent, message: None)
        succeeded(register_imported(found, name="lab-installer", os_name="Lab installer", source="test"))
    return Image.objects.get(name="lab-installer")


@pytest.fixture
def no_worker_takes_jobs(settings):
    """Jobs this test queues go to queues no worker consumes. The session's Celery worker (started
    by the first lab or browser test; pytest-django runs transactional tests after the others, so
    such a worker may already be up) would otherwise run them behind the test's back."""
    import redis

    queues = [f"{settings.CELERY_TASK_DEFAULT_QUEUE}-nobody", f"{settings.CELERY_HA_QUEUE}-nobody"]
    settings.CELERY_TASK_DEFAULT_QUEUE, settings.CELERY_HA_QUEUE = queues
    yield queues
    redis.Redis.from_url(settings.CELERY_BROKER_URL).delete(*queues)


@pytest.fixture(autouse=True)
def _unit_tests_queue_for_nobody(request):
    """Every test that is not a lab or browser test queues its jobs where no worker takes them (see
    no_worker_takes_jobs): a unit test runs a job itself, with run_job, or not at all."""
    if request.node.get_closest_marker("lab") or request.node.get_closest_marker("browser"):
        return
    request.getfixturevalue("no_worker_takes_jobs")

