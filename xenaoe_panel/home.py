"""The front page: the cluster's dashboard for operators; a tenant's users start at their VMs."""
from __future__ import annotations

from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect

from hosts.views import DashboardView
from tenants.access import is_operator

_dashboard = DashboardView.as_view()


def home(request: HttpRequest) -> HttpResponse:
    if not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path())
    if is_operator(request.user):
        return _dashboard(request)
    return redirect("vm-list")
