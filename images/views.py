"""The image library's pages: the list (tenants see what is published to them), one image with
its copies, and the operators' upload (streamed to disk, size-limited, checksummed as it arrives)."""
from __future__ import annotations

import hashlib
import secrets
from pathlib import Path

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.mixins import LoginRequiredMixin
from django.core.exceptions import ValidationError
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.views import View
from django.views.generic import DetailView, FormView, ListView

from images.job_params import ImageImportParams
from images.models import Image, image_name_validator, login_user_validator
from images.services import copy_to_disk_servers, delete_image, set_default
from jobs.services import start_job
from tenants.access import is_operator
from xenaoe_panel.mixins import OperatorRequiredMixin

CHUNK = 1 << 20


class ImageListView(LoginRequiredMixin, ListView):
    template_name = "images/image_list.html"

    def get_queryset(self):
        return Image.objects.visible_to(self.request.user).prefetch_related("copies__disk_server")

    def get_context_data(self, **kwargs):
        return super().get_context_data(**kwargs) | {"operator": is_operator(self.request.user)}


class ImageDetailView(LoginRequiredMixin, DetailView):
    template_name = "images/image_detail.html"
    slug_field = slug_url_kwarg = "name"

    def get_queryset(self):
        return Image.objects.visible_to(self.request.user).prefetch_related("copies__disk_server", "tenants")

    def get_context_data(self, **kwargs):
        operator = is_operator(self.request.user)
        used_by = list(self.object.vms.values_list("name", flat=True)[:20]) if operator else []
        return super().get_context_data(**kwargs) | {"operator": operator, "used_by": used_by}


class ImageActionView(OperatorRequiredMixin, View):
    """default | copy | delete, by a POST from the image's page."""

    def post(self, request, name: str) -> HttpResponse:
        image = get_object_or_404(Image, name=name)
        action = request.POST.get("action")
        try:
            if action == "default":
                set_default(name)
                messages.success(request, f"{name} is now the default image")
            elif action == "copy":
                return redirect(copy_to_disk_servers(image, user=request.user))
            elif action == "delete":
                delete_image(name)
                messages.success(request, f"{name} deleted; its copies are being removed from the disk servers")
                return redirect("image-list")
            else:
                raise Http404("No such action.")
        except ValidationError as exc:
            messages.error(request, " ".join(exc.messages))
        return redirect(image)


class UploadForm(forms.Form):
    file = forms.FileField(help_text="A raw or qcow2 disk image with an ext4 root filesystem, or an installer ISO.")
    name = forms.CharField(max_length=63, validators=[image_name_validator])
    login_user = forms.CharField(max_length=32, required=False, validators=[login_user_validator],
                                 help_text="Who SSH keys go to (default: the image's user with uid 1000).")
    os = forms.CharField(label="OS", max_length=63, required=False, help_text="Default: from its os-release.")
    sha256 = forms.CharField(label="SHA-256 (optional)", max_length=64, required=False,
                             help_text="If given, the upload must match it.")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for field in self.fields.values():
            field.widget.attrs.setdefault("class", "form-control")

    def clean_name(self) -> str:
        name = self.cleaned_data["name"]
        if Image.objects.filter(name=name).exists():
            raise ValidationError(f"an image named {name!r} already exists")
        return name


class ImageUploadView(OperatorRequiredMixin, FormView):
    """Django spools a large upload to a temporary file as it arrives; the view refuses a body
    over the limit before reading it, copies the file into the panel's store while hashing it,
    and queues `image.import` (conversion, then the copy to the disk servers, both followed live)."""

    form_class = UploadForm
    template_name = "images/image_upload.html"

    def post(self, request, *args, **kwargs):
        limit = settings.IMAGE_UPLOAD_MAX_MIB * CHUNK
        length = int(request.META.get("CONTENT_LENGTH") or 0)
        if length > limit:
            return HttpResponse(f"The upload is larger than {settings.IMAGE_UPLOAD_MAX_MIB} MiB "
                                "(XENAOE_IMAGE_UPLOAD_MAX_MIB).", status=413, content_type="text/plain")
        return super().post(request, *args, **kwargs)

    def get_context_data(self, **kwargs):
        return super().get_context_data(**kwargs) | {"max_mib": settings.IMAGE_UPLOAD_MAX_MIB}

    def form_valid(self, form):
        data = form.cleaned_data
        uploads = Path(settings.IMAGE_STORE) / "uploads"
        uploads.mkdir(parents=True, exist_ok=True)
        target = uploads / f"{secrets.token_hex(8)}.upload"
        digest = hashlib.sha256()
        with target.open("wb") as out:
            for chunk in data["file"].chunks(CHUNK):
                digest.update(chunk)
                out.write(chunk)
        if data["sha256"] and data["sha256"].lower() != digest.hexdigest():
            target.unlink()
            form.add_error("sha256", f"the file's SHA-256 is {digest.hexdigest()}, not {data['sha256']}")
            return self.form_invalid(form)
        job = start_job("image.import", target_name=f"image {data['name']}", user=self.request.user,
                        params=ImageImportParams(
                            upload=str(target), image=data["name"], login_user=data["login_user"], os=data["os"],
                            filename=Path(data["file"].name).name[:100], sha256=digest.hexdigest()))
        return redirect(job)
