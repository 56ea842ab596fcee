"""One representation of an image, for the CLI's --json, the API and the pages' live parts."""
from __future__ import annotations

from images.models import Image


def image_summary(image: Image) -> dict[str, object]:
    return {
        "name": image.name, "kind": image.kind, "os": image.os_name, "os_version": image.os_version,
        "login_user": image.login_user,
        "size_mib": image.size_mib, "min_disk_mib": image.min_disk_mib, "sha256": image.sha256,
        "kernel_version": image.kernel_version, "state": image.state, "default": image.is_default,
        "public": image.public, "disk_servers": sorted(image.disk_servers), "source": image.source,
    }
