from django.contrib import admin

from vms.models import VirtualMachine


@admin.register(VirtualMachine)
class VirtualMachineAdmin(admin.ModelAdmin):
    list_display = ("name", "state", "cpu_server", "vcpus", "memory_mib", "disk_mib")
    list_filter = ("state", "cpu_server")
    search_fields = ("name",)
