from django.contrib import admin

from vms.models import ConsoleSession, VirtualMachine


@admin.register(VirtualMachine)
class VirtualMachineAdmin(admin.ModelAdmin):
    list_display = ("name", "state", "cpu_server", "vcpus", "memory_mib", "disk_mib")
    list_filter = ("state", "cpu_server")
    search_fields = ("name",)


@admin.register(ConsoleSession)
class ConsoleSessionAdmin(admin.ModelAdmin):
    """Read only: the record of who opened which console, from where (vms/console.py writes it)."""

    list_display = ("vm", "username", "via", "client", "opened_at", "closed_at", "end_reason")
    list_filter = ("via",)
    search_fields = ("vm__name", "username", "client")

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
