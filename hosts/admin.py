from django.contrib import admin

from hosts.models import CpuServer, DiskServer


@admin.register(DiskServer)
class DiskServerAdmin(admin.ModelAdmin):
    list_display = ("name", "address", "aoe_shelf", "san_interface", "capacity_mib", "state")
    list_filter = ("state",)
    search_fields = ("name", "address")


@admin.register(CpuServer)
class CpuServerAdmin(admin.ModelAdmin):
    list_display = ("name", "address", "hypervisor", "memory_mib", "vcpus", "state")
    list_filter = ("state", "hypervisor")
    search_fields = ("name", "address")
    # Set by a storage fence, cleared only by returning the host to service (ha.readmit), which first
    # destroys its stale guest copies: never by hand here.
    readonly_fields = ("storage_fenced_at",)
