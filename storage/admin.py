from django.contrib import admin

from storage.models import AoEExport, Mirror


class AoEExportInline(admin.TabularInline):
    model = AoEExport
    extra = 0


@admin.register(Mirror)
class MirrorAdmin(admin.ModelAdmin):
    list_display = ("vm", "state")
    inlines = [AoEExportInline]


@admin.register(AoEExport)
class AoEExportAdmin(admin.ModelAdmin):
    list_display = ("name", "disk_server", "mirror", "leg", "size_mib", "state")
    list_filter = ("state", "disk_server")
