"""The parameters of the image job kinds (jobs/params.py)."""
from __future__ import annotations

from dataclasses import dataclass

from jobs.params import JobParams


@dataclass(frozen=True)
class ImageCopyParams(JobParams):
    """image.copy: the image, and the disk servers it goes to, in order."""

    host_fields = ("disk_servers",)
    image: str
    disk_servers: list[str]


@dataclass(frozen=True)
class ImageRemoveParams(JobParams):
    """image.remove: the copies of an image already forgotten, each `[disk server, path]`, or
    `[disk server, path, shelf, slot]` for an ISO's copy served until now."""

    image: str
    copies: list[list[str | int]]

    def hosts(self) -> list[str]:
        return [copy[0] for copy in self.copies if copy]


@dataclass(frozen=True)
class ImageImportParams(JobParams):
    """image.import: the uploaded file (removed by the job) and what the uploader said of it."""

    upload: str  # its path in the image store
    image: str  # the new image's name
    login_user: str
    os: str
    filename: str  # as uploaded, for the image's source
    sha256: str  # of the upload, as received
