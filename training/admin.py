from django.contrib import admin

from training.models import TrainingJob


@admin.register(TrainingJob)
class TrainingJobAdmin(admin.ModelAdmin):
    """Read-only: a job's state changes only through training.services (with its audit row)."""

    list_display = ("id", "project", "status", "created_by", "created_at", "finished_at")
    list_filter = ("status", "project")
    readonly_fields = [field.name for field in TrainingJob._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
