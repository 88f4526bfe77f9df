"""Candidates sampled from the model itself, and patch rounds judged blind.

A GenerationRequest is one click on "Generate candidates" (or the generation half of "Next
round"): which cases, which model and adapter, the sampling settings, and the worker's progress,
exactly like a training job's row. A Round is one patch in a project's timeline: its answers
(one per case) and the blind comparisons of each answer against the previous round's answer.
Every state change goes through ``rounds.services``.
"""

from django.conf import settings
from django.db import models
from django.db.models import Q

from training.liveness import RowStatus, ShownStatus, generation_stopped_error

GenerationStatus = RowStatus  # the life of a training job's row too (training.lifecycle)


class Purpose(models.TextChoices):
    CANDIDATES = "candidates", "candidates to compare"
    ROUND = "round", "answers of a patch round"


class GenerationRequest(ShownStatus, models.Model):
    project = models.ForeignKey(
        "annotate.Project", on_delete=models.CASCADE, related_name="generation_requests"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    purpose = models.CharField(max_length=16, choices=Purpose.choices, default=Purpose.CANDIDATES)
    status = models.CharField(
        max_length=16,
        choices=GenerationStatus.choices,
        default=GenerationStatus.QUEUED,
        db_index=True,
    )

    # Which cases, and how they were chosen ({"kind": "flagged" | "filter" | "case" | "ids", ...}).
    cases = models.ManyToManyField("annotate.Case", related_name="+")
    selection = models.JSONField(default=dict, blank=True)

    # Which model: a base folder, optionally with the adapter a training job produced.
    model_path = models.CharField(max_length=1000)
    adapter_job = models.ForeignKey(
        "training.TrainingJob",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="generation_requests",
    )
    adapter_path = models.CharField(max_length=1000, blank=True)

    # Sampling settings (temperature 0 means greedy).
    n = models.PositiveSmallIntegerField(default=4)
    temperature = models.FloatField(default=0.8)
    top_p = models.FloatField(default=0.95)
    max_new_tokens = models.PositiveIntegerField(default=128)
    seed = models.BigIntegerField(default=0)  # 0 to 2**32 - 1, as a training seed

    # Live progress, written by the worker: {"step", "total", "phase"} in cases.
    progress = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    worker_name = models.CharField(max_length=255, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    cancel_requested = models.BooleanField(default=False)

    # What came out: answers sampled, stored as new responses, dropped (exact duplicates of an
    # answer the case already had or of each other, or empty), and comparisons queued.
    sampled_count = models.PositiveIntegerField(default=0)
    candidate_count = models.PositiveIntegerField(default=0)
    duplicate_count = models.PositiveIntegerField(default=0)
    comparison_count = models.PositiveIntegerField(default=0)

    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["project", "-created_at"])]
        constraints = [
            models.CheckConstraint(condition=Q(n__gte=1), name="rounds_generation_n_gte_1"),
            models.CheckConstraint(
                condition=Q(temperature__gte=0), name="rounds_generation_temperature_gte_0"
            ),
            models.CheckConstraint(
                condition=Q(top_p__gt=0) & Q(top_p__lte=1), name="rounds_generation_top_p_range"
            ),
        ]

    def __str__(self) -> str:
        return f"generation {self.pk} ({self.status})"

    # The reaper's words when its worker is gone.
    stopped_error = staticmethod(generation_stopped_error)
    terse_causes = True

    @property
    def progress_percent(self) -> int:
        if self.status == GenerationStatus.SUCCEEDED:
            return 100
        step, total = self.progress.get("step") or 0, self.progress.get("total") or 0
        return int(100 * step / total) if total else 0

    @property
    def model_label(self) -> str:
        """What the origin of each candidate names: the model folder's name and the adapter."""
        from pathlib import Path

        return Path(self.model_path).name or self.model_path

    @property
    def adapter_label(self) -> str:
        if self.adapter_job_id:
            return f"job-{self.adapter_job_id}"
        return ""


class Round(models.Model):
    """One patch of a project: round 0 is the deployed model, round k the adapter of a job."""

    project = models.ForeignKey("annotate.Project", on_delete=models.CASCADE, related_name="rounds")
    number = models.PositiveSmallIntegerField()
    job = models.OneToOneField(
        "training.TrainingJob",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="round",
    )
    generation = models.OneToOneField(
        GenerationRequest,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="round",
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["project", "number"]
        constraints = [
            models.UniqueConstraint(fields=["project", "number"], name="rounds_round_number"),
            models.CheckConstraint(
                condition=Q(number=0, job__isnull=True) | Q(number__gte=1, job__isnull=False),
                name="rounds_round_job_iff_patched",
            ),
        ]

    def __str__(self) -> str:
        return f"round {self.number}"


class RoundAnswer(models.Model):
    """A case's answer in a round, and its blind comparison with the previous round's answer.

    No comparison when the answer is the same text as before (then ``response`` is the previous
    row itself, and it counts as a tie) or when the case had no earlier answer. ``new_side``
    says which side of the comparison holds this round's answer.
    """

    round = models.ForeignKey(Round, on_delete=models.CASCADE, related_name="answers")
    case = models.ForeignKey("annotate.Case", on_delete=models.CASCADE, related_name="+")
    response = models.ForeignKey("annotate.Response", on_delete=models.CASCADE, related_name="+")
    previous_response = models.ForeignKey(
        "annotate.Response", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    comparison = models.OneToOneField(
        "annotate.Comparison",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="round_answer",
    )
    new_side = models.CharField(max_length=1, blank=True)  # "a" | "b" | "" (no comparison)

    class Meta:
        ordering = ["round", "case"]
        constraints = [
            models.UniqueConstraint(fields=["round", "case"], name="rounds_one_answer_per_case"),
        ]

    def __str__(self) -> str:
        return f"round {self.round_id} answer for case {self.case_id}"

    @property
    def unchanged(self) -> bool:
        return self.response_id == self.previous_response_id
