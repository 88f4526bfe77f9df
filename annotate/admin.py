from django.contrib import admin

from annotate.models import Case, Comparison, Judgment, Lease, Project, Response


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "overlap", "restricted", "created_at"]
    prepopulated_fields = {"slug": ["name"]}
    filter_horizontal = ["members"]


@admin.register(Case)
class CaseAdmin(admin.ModelAdmin):
    list_display = ["id", "project", "split", "flagged", "source", "created_at"]
    list_filter = ["project", "split", "flagged"]
    search_fields = ["trace_id", "note"]


@admin.register(Response)
class ResponseAdmin(admin.ModelAdmin):
    list_display = ["id", "case", "origin", "model_name", "adapter_name", "created_at"]
    list_filter = ["origin"]
    raw_id_fields = ["case", "created_by"]


@admin.register(Comparison)
class ComparisonAdmin(admin.ModelAdmin):
    list_display = ["id", "project", "case", "judgment_count", "needs_judgments", "label", "blind"]
    list_filter = ["project", "needs_judgments", "blind"]
    raw_id_fields = ["case", "response_a", "response_b"]
    # Counters are kept by the services under a row lock; editing them by hand breaks the queue.
    readonly_fields = ["judgment_count", "needs_judgments"]


@admin.register(Judgment)
class JudgmentAdmin(admin.ModelAdmin):
    list_display = ["id", "comparison", "annotator", "choice", "shown_left", "created_at"]
    list_filter = ["choice"]
    raw_id_fields = ["comparison", "annotator", "corrected_response"]

    def has_change_permission(self, request, obj=None) -> bool:
        return False  # judgments change only through the services, which write audit rows


@admin.register(Lease)
class LeaseAdmin(admin.ModelAdmin):
    list_display = ["id", "comparison", "annotator", "expires_at", "shown_left"]
    raw_id_fields = ["comparison", "annotator"]
