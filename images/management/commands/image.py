"""`manage.py image build RECIPE | import FILE --name N | list [--json] | copy N | default N |
publish N | delete N`: the image library for operators and scripts (docs/images.md)."""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
import threading
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management.base import CommandError

from audit.actors import AuditedCommand
from images import build, importer
from images.models import Image
from images.serializers import ImageSerializer
from images.services import (
    copy_to_disk_servers,
    delete_image,
    publish,
    register_built,
    register_imported,
    set_default,
)
from jobs.follow import follow
from jobs.models import Job
from jobs.runner import run_job


class ProgressBar:
    """One line that fills up on a terminal; plain lines when the output is not one."""

    WIDTH = 30

    def __init__(self, write: Any) -> None:
        self.write = write
        self.tty = sys.stdout.isatty()
        self.last = ""

    def __call__(self, percent: int, message: str) -> None:
        filled = self.WIDTH * percent // 100
        line = f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {percent:3d} % {message}"
        if self.tty:
            sys.stdout.write("\r" + line[:120].ljust(len(self.last)))
            sys.stdout.flush()
            if percent >= 100:
                sys.stdout.write("\n")
        elif message != self.last:
            self.write(line)
        self.last = line if self.tty else message


class Command(AuditedCommand):
    help = "Build, import, copy and list the images VMs are created from."

    def add_arguments(self, parser: ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        make = sub.add_parser("build", help="build an image from Debian packages (cached)")
        make.add_argument("recipe", choices=sorted(build.RECIPES))
        make.add_argument("--name", default=None, help="the image's name (default: the recipe's)")
        make.add_argument("--refresh", action="store_true", help="build again even if a build is cached")
        make.add_argument("--default", action="store_true", help="make it the site's default image")
        take = sub.add_parser("import", help="import a raw or qcow2 disk image, or an installer ISO")
        take.add_argument("file", type=Path)
        take.add_argument("--name", required=True)
        take.add_argument("--login-user", default="", help="the user SSH keys go to (default: the image's uid 1000)")
        take.add_argument("--os", default="", help="e.g. 'Debian' (default: from the image's os-release)")
        take.add_argument("--os-version", default="")
        take.add_argument("--default", action="store_true")
        listing = sub.add_parser("list", help="the images, one line each")
        listing.add_argument("--json", action="store_true")
        copy = sub.add_parser("copy", help="copy an image to every disk server again (checksum verified)")
        copy.add_argument("name")
        default = sub.add_parser("default", help="make an image the site's default")
        default.add_argument("name")
        pub = sub.add_parser("publish", help="who may create VMs from it")
        pub.add_argument("name")
        pub.add_argument("--tenants", default="", help="comma-separated tenant short names")
        pub.add_argument("--private", action="store_true", help="only the listed tenants (default: everyone)")
        remove = sub.add_parser("delete", help="forget an image no VM uses, and its copies")
        remove.add_argument("name")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            getattr(self, f"do_{options['action']}")(options)
        except (ValidationError, build.BuildError, importer.ImportError_) as exc:
            messages = exc.messages if isinstance(exc, ValidationError) else [str(exc)]
            raise CommandError("; ".join(messages)) from exc

    def _run_copy(self, job: Job) -> None:
        """Run the copy job here (no worker needed) while printing its log; a worker that gets
        the queued message later finds it done (jobs are claimed once)."""
        worker = threading.Thread(target=run_job, args=(job.pk, "manage.py image"), daemon=True)
        worker.start()
        finished = follow(job.pk, self.stdout.write, start_timeout=3600)
        worker.join(timeout=5)
        if finished.state != "succeeded":
            raise CommandError(f"job #{job.pk} {finished.state}: {finished.message}")

    def do_build(self, options: dict) -> None:
        recipe = build.RECIPES[options["recipe"]]
        name = options["name"] or recipe.name
        built = build.build(recipe, Path(settings.IMAGE_BUILD_CACHE), ProgressBar(self.stdout.write),
                            refresh=options["refresh"])
        existing = Image.objects.filter(name=name).first()
        if existing is not None and existing.sha256 == built.sha256:
            self.stdout.write(f"{name} is registered already (sha256 {built.sha256[:12]})")
            if options["default"]:
                set_default(name)
            if existing.state != "ready" or len(existing.disk_servers) < existing.copies.count():
                self._run_copy(copy_to_disk_servers(existing))
            return
        if existing is not None:
            raise CommandError(f"an image named {name} exists with other contents: choose --name, "
                               f"or delete it first (manage.py image delete {name})")
        self._run_copy(register_built(recipe, built, name=name, make_default=options["default"],
                                      source=f"built from recipe {recipe.name} ({built.directory.name})"))

    def do_import(self, options: dict) -> None:
        scratch = Path(settings.IMAGE_STORE) / "imports"
        scratch.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="import-", dir=scratch))
        try:
            found = importer.import_file(options["file"], work, ProgressBar(self.stdout.write))
            for warning in found.warnings:
                self.stderr.write(f"warning: {warning}")
            self._run_copy(register_imported(
                found, name=options["name"], os_name=options["os"], os_version=options["os_version"],
                login_user=options["login_user"], source=f"imported from {options['file'].name}",
                make_default=options["default"]))
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def do_list(self, options: dict) -> None:
        images = Image.objects.prefetch_related("copies__disk_server")
        if options["json"]:
            self.stdout.write(json.dumps(ImageSerializer(images, many=True, for_operator=True).data, indent=2))
            return
        for image in images:
            self.stdout.write(f"{image.name:<20} {image.os_name} {image.os_version:<16} {image.size_mib:>6} MiB "
                              f"{image.state:<8} {'default ' if image.is_default else ''}"
                              f"on {', '.join(image.disk_servers) or 'no disk server'}")

    def do_copy(self, options: dict) -> None:
        image = Image.objects.filter(name=options["name"]).first()
        if image is None:
            raise CommandError(f"no image named {options['name']!r}")
        self._run_copy(copy_to_disk_servers(image))

    def do_default(self, options: dict) -> None:
        set_default(options["name"])
        self.stdout.write(f"{options['name']} is the default image")

    def do_publish(self, options: dict) -> None:
        tenants = [t for t in options["tenants"].split(",") if t]
        image = publish(options["name"], public=not options["private"], tenants=tenants)
        who = "every tenant" if image.public else (", ".join(tenants) or "operators only")
        self.stdout.write(f"{image.name}: {who}")

    def do_delete(self, options: dict) -> None:
        delete_image(options["name"])
        self.stdout.write(f"{options['name']} deleted; its copies are being removed")
