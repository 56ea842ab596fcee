"""Logging in (with failed-login limits), logging out, password reset by email and password change.

Django's own auth views; the forms add the limits (login_limit.py) and Bootstrap's classes.
"""
from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth import views as auth_views
from django.contrib.auth.forms import AuthenticationForm, PasswordChangeForm, PasswordResetForm, SetPasswordForm
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.urls import path

from audit.accounts import locked_out
from xenaoe_panel import login_limit


class LoginLimitMixin:
    """Refuses a login while its account-and-address or its address is locked, without checking the
    password; counts wrong passwords; a right one clears the account-and-address count."""

    request: HttpRequest | None
    cleaned_data: dict[str, Any]
    user_cache: Any
    lockout: login_limit.Lockout | None = None

    def clean(self) -> dict[str, Any]:
        if self.request is None:  # no request, no address to count against: refuse rather than go unlimited
            raise ValidationError("Logging in needs a request.", code="no_request")
        username = self.cleaned_data.get("username") or ""
        address = login_limit.client_address(self.request)
        self.lockout = login_limit.lockout(username, address)
        if self.lockout is not None:
            raise ValidationError(self.lockout.message, code="locked_out")
        try:
            cleaned = super().clean()  # type: ignore[misc]
        except ValidationError as error:
            # A known user refused after a right password (inactive, not staff) guessed nothing.
            if self.user_cache is None and username and self.cleaned_data.get("password"):
                self.lockout = login_limit.record_failure(username, address)
                if self.lockout is not None:
                    locked_out(username, self.request, self.lockout)
                    raise ValidationError(self.lockout.message, code="locked_out") from error
            raise
        if self.user_cache is not None:
            login_limit.record_success(username, address)
        return cleaned


class PanelAuthenticationForm(LoginLimitMixin, AuthenticationForm):
    pass


class AdminLoginForm(LoginLimitMixin, AdminAuthenticationForm):
    """The admin site's own login page counts against the same limits."""


class BootstrapFieldsMixin:
    fields: dict[str, forms.Field]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        for field in self.fields.values():
            field.widget.attrs["class"] = "form-control"


class PanelPasswordResetForm(BootstrapFieldsMixin, PasswordResetForm):
    def save(self, *args: Any, request: HttpRequest | None = None, **kwargs: Any) -> None:
        address = login_limit.client_address(request) if request is not None else ""
        if login_limit.allow_reset_email(address, self.cleaned_data["email"]):
            super().save(*args, request=request, **kwargs)


class PanelSetPasswordForm(BootstrapFieldsMixin, SetPasswordForm):
    pass


class PanelPasswordChangeForm(BootstrapFieldsMixin, PasswordChangeForm):
    pass


class PanelLoginView(auth_views.LoginView):
    authentication_form = PanelAuthenticationForm

    def form_invalid(self, form: PanelAuthenticationForm) -> HttpResponse:  # type: ignore[override]
        response = super().form_invalid(form)
        if form.lockout is not None:
            response.status_code = 429
            response["Retry-After"] = str(form.lockout.retry_after_s)
        return response


urlpatterns = [
    path("login/", PanelLoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    # Password reset: the answer is the same whether or not an account has that address, so the
    # page tells nobody which addresses are registered; the link is single-use and expires after
    # PASSWORD_RESET_TIMEOUT.
    path("password-reset/", auth_views.PasswordResetView.as_view(form_class=PanelPasswordResetForm),
         name="password_reset"),
    path("password-reset/sent/", auth_views.PasswordResetDoneView.as_view(), name="password_reset_done"),
    path("password-reset/<uidb64>/<token>/",
         auth_views.PasswordResetConfirmView.as_view(form_class=PanelSetPasswordForm), name="password_reset_confirm"),
    path("password-reset/done/", auth_views.PasswordResetCompleteView.as_view(), name="password_reset_complete"),
    path("password-change/", auth_views.PasswordChangeView.as_view(form_class=PanelPasswordChangeForm),
         name="password_change"),
    path("password-change/done/", auth_views.PasswordChangeDoneView.as_view(), name="password_change_done"),
]
