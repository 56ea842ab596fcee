"""Notification targets: a user's own (every target for operators), each with its delivery log and a
"Send a test" button. Thin: the verbs are notifications/services.py's; no page sends anything itself."""
from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.mixins import LoginRequiredMixin
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.views import View
from django.views.generic import DetailView, ListView
from django.views.generic.edit import CreateView, UpdateView

from notifications import services
from notifications.forms import TargetForm
from notifications.models import Target
from xenaoe_panel.mixins import HiddenUnlessAllowedMixin

DELIVERIES_SHOWN = 50


class TargetListView(LoginRequiredMixin, ListView):
    template_name = "notifications/target_list.html"
    context_object_name = "targets"

    def get_queryset(self):
        return Target.objects.visible_to(self.request.user).select_related("owner")

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        return super().get_context_data(**kwargs) | {"may_add": services.may_have_targets(self.request.user)}


class _TargetFormMixin(HiddenUnlessAllowedMixin):
    model = Target
    form_class = TargetForm
    template_name = "notifications/target_form.html"

    def test_func(self) -> bool:
        return services.may_have_targets(self.request.user)

    def get_form_kwargs(self) -> dict[str, Any]:
        return super().get_form_kwargs() | {"user": self.request.user}

    def form_valid(self, form: TargetForm) -> HttpResponse:
        target = form.save(commit=False)
        if target.pk is None:
            target.owner = self.request.user
        try:
            secret = services.save_target(target)
        except ValidationError as exc:
            form.add_error(None, exc)
            return self.form_invalid(form)
        if secret:
            _show_secret_once(self.request, target, secret)
        else:
            messages.success(self.request, f"notification target {target.name} saved")
        return redirect(target)


class TargetCreateView(_TargetFormMixin, CreateView):
    pass


class TargetEditView(_TargetFormMixin, UpdateView):
    def get_queryset(self):
        return Target.objects.visible_to(self.request.user)


class TargetDetailView(LoginRequiredMixin, DetailView):
    template_name = "notifications/target_detail.html"
    context_object_name = "target"

    def get_queryset(self):
        return Target.objects.visible_to(self.request.user).select_related("owner")

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        deliveries = self.object.deliveries.select_related("event").order_by("-created_at", "-id")
        return super().get_context_data(**kwargs) | {"deliveries": deliveries[:DELIVERIES_SHOWN]}


def _show_secret_once(request: HttpRequest, target: Target, secret: str) -> None:
    # Messages live in the database session (settings.MESSAGE_STORAGE), never in a cookie.
    messages.warning(request, f"The signing secret of {target.name} is {secret} — copy it now: the panel never "
                              "shows it again (rotate it to get a new one).")


class _TargetActionView(LoginRequiredMixin, View):
    def target(self, pk: int) -> Target:
        return get_object_or_404(Target.objects.visible_to(self.request.user), pk=pk)


class TargetTestView(_TargetActionView):
    def post(self, request: HttpRequest, pk: int) -> HttpResponse:
        target = self.target(pk)
        delivery = services.test_target(target)
        messages.info(request, f"test notification queued (delivery #{delivery.pk}): its line below says how it went")
        return redirect(target)


class TargetRotateSecretView(_TargetActionView):
    def post(self, request: HttpRequest, pk: int) -> HttpResponse:
        target = self.target(pk)
        try:
            secret = services.rotate_secret(target)
        except ValidationError as exc:
            messages.error(request, "; ".join(exc.messages))
            return redirect(target)
        _show_secret_once(request, target, secret)
        return redirect(target)


class TargetDeleteView(_TargetActionView):
    def post(self, request: HttpRequest, pk: int) -> HttpResponse:
        target = self.target(pk)
        services.delete_target(target)
        messages.success(request, f"notification target {target.name} removed")
        return redirect("notification-targets")
