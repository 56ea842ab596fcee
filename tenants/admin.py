from django.contrib import admin

from tenants.models import Membership, Tenant


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display = ["slug", "name", "may_create_vms", "quota_vms", "quota_vcpus", "quota_memory_mib", "quota_disk_mib"]
    search_fields = ["slug", "name"]
    inlines = [MembershipInline]
