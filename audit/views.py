"""The audit log's page: every event for operators, a tenant's own for its users, filtered by the
query string (audit/filtersets.py, which the API's list uses too)."""
from __future__ import annotations

from typing import Any

from django.contrib.auth.mixins import LoginRequiredMixin
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.views.generic import ListView

from audit.filtersets import AuditEventFilterSet
from audit.models import AuditEvent
from tenants.access import is_operator
from xenaoe_panel.pagination import HistoryPaginationMixin


class AuditEventListView(LoginRequiredMixin, HistoryPaginationMixin, ListView):
    """Bad filter values show the form's messages, with status 400 and no events, rather than a
    list that silently ignores them (as the job history does)."""

    template_name = "audit/event_list.html"
    paginate_by = 50
    filterset: AuditEventFilterSet

    def get(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        events = AuditEvent.objects.visible_to(request.user).select_related("tenant")
        self.filterset = AuditEventFilterSet(request.GET, events, request=request)
        response = super().get(request, *args, **kwargs)
        if self.filterset.errors:
            response.status_code = 400
        return response

    def get_queryset(self) -> QuerySet[AuditEvent]:
        return self.filterset.qs if self.filterset.is_valid() else self.filterset.queryset.none()

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        count = context["paginator"].count
        context.update(form=self.filterset.form, event_count=count, show_tenant=is_operator(self.request.user),
                       count_text=f"{count:,} event{'' if count == 1 else 's'}")
        return context
