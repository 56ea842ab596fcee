"""Tenants in Django's admin. What the admin changes goes through the same rules as the services:
a tenant that loses the console, or a user moved out of (or into another) tenant, loses its open
websockets at once (xenaoe_panel/ws_guard.py), as with `manage.py tenant` and the API; changes to
its quotas, its permissions and its users are audit events as theirs are."""
from django.contrib import admin
from django.contrib.auth import get_user_model

from audit.choices import Action
from audit.services import record
from tenants.models import Membership, Tenant
from tenants.services import record_changes, record_membership, settings_of
from xenaoe_panel.ws_guard import end_user_streams


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display = ["slug", "name", "may_create_vms", "quota_vms", "quota_vcpus", "quota_memory_mib", "quota_disk_mib"]
    search_fields = ["slug", "name"]
    inlines = [MembershipInline]

    def save_model(self, request, obj: Tenant, form, change: bool) -> None:
        before = Tenant.objects.get(pk=obj.pk) if change else None
        had_console = before is not None and before.allows("console")
        super().save_model(request, obj, form, change)
        if before is None:
            record(Action.TENANT_CREATED, "tenant", obj.slug, tenant_id=obj.pk, details=settings_of(obj))
        else:
            record_changes(settings_of(before), obj)
        if had_console and not obj.allows("console"):
            for user_id in Membership.objects.filter(tenant=obj).values_list("user_id", flat=True):
                end_user_streams(user_id, "console no longer allowed")

    def save_formset(self, request, form, formset, change: bool) -> None:
        if formset.model is not Membership:
            super().save_formset(request, form, formset, change)
            return
        # The users whose membership changes (moved here from elsewhere, or taken out): before saving.
        before = {m.pk: m.user_id for m in Membership.objects.filter(tenant=form.instance)}
        super().save_formset(request, form, formset, change)
        after = set(Membership.objects.filter(tenant=form.instance).values_list("user_id", flat=True))
        moved = (set(before.values()) - after) | {m.user_id for m in formset.new_objects}
        moved |= {m.user_id for m, _fields in formset.changed_objects}
        tenant_id = form.instance.pk
        for user in get_user_model().objects.filter(pk__in=moved):
            joined = user.pk in after
            record_membership(user, left=None if joined else tenant_id, joined=tenant_id if joined else None)
        for user_id in moved:
            end_user_streams(user_id, "moved to another tenant")
