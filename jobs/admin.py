from django.contrib import admin

from jobs.models import Job, JobLogEntry


class JobLogEntryInline(admin.TabularInline):
    model = JobLogEntry
    extra = 0
    readonly_fields = ("serial", "time", "level", "message", "step", "total_steps", "data")
    can_delete = False


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ("id", "kind", "target_name", "state", "step", "total_steps", "created_at")
    list_filter = ("state", "kind")
    search_fields = ("target_name",)
    inlines = [JobLogEntryInline]
