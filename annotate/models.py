"""Projects, cases, responses, comparisons, judgments and the leases of the annotation queue.

Every state change goes through annotate/services/; reads that need more than one line of ORM
live in annotate/selectors.py. The database, not Python, keeps the queue honest: one judgment per
annotator per comparison (a unique constraint), and `judgment_count` never passes the project's
overlap (a filtered UPDATE in `judgment_submit`, under the comparison's row lock).
"""

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import F, Q


class Split(models.TextChoices):
    TRAIN = "train", "train"
    HELDOUT = "heldout", "held-out"
    REGRESSION = "regression", "regression"


def kind_label(kind: str) -> str:
    """How a split or an eval kind reads on a page or a model card: the stored "heldout" is
    written "held-out" everywhere a person reads it (one spelling)."""
    return Split.HELDOUT.label if kind == Split.HELDOUT else kind


class Origin(models.TextChoices):
    DEPLOYED = "deployed", "deployed model"
    HUMAN = "human", "human"
    GENERATED = "generated", "generated"
    IMPORTED = "imported", "imported"


class Choice(models.TextChoices):
    A = "a", "A better"
    B = "b", "B better"
    TIE = "tie", "tie"
    BOTH_BAD = "both_bad", "both bad"


class Side(models.TextChoices):
    A = "a", "A"
    B = "b", "B"


class Project(models.Model):
    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=100, unique=True)
    guidelines = models.TextField(blank=True, help_text="Markdown, shown to annotators.")
    overlap = models.PositiveSmallIntegerField(
        default=1,
        validators=[MinValueValidator(1, "Overlap is at least 1 annotator per comparison.")],
        help_text="How many distinct annotators judge each comparison.",
    )
    restricted = models.BooleanField(
        default=False, help_text="Only members (and curators) may work on a restricted project."
    )
    members = models.ManyToManyField(
        settings.AUTH_USER_MODEL, blank=True, related_name="annotation_projects"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name", "id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(overlap__gte=1), name="annotate_project_overlap_gte_1"
            )
        ]

    def __str__(self) -> str:
        return self.name


class Case(models.Model):
    """A prompt worth attention: a bad answer flagged in production, or a prompt to evaluate on."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="cases")
    # A string, or a list of {"role", "content"} messages ("system" first when there is one).
    prompt = models.JSONField()
    source = models.CharField(max_length=200, blank=True, help_text='e.g. "import:cases.jsonl"')
    trace_id = models.CharField(max_length=200, blank=True)
    note = models.TextField(blank=True)
    flagged = models.BooleanField(default=False)
    split = models.CharField(max_length=16, choices=Split.choices, default=Split.TRAIN)
    tags = models.JSONField(default=list, blank=True)
    topic = models.CharField(max_length=200, blank=True)
    # What a right answer must and must not say: phrases or /regex/ items, the rule of
    # training/engine/checks.py. Empty lists: the expected answer is matched exactly.
    must_include = models.JSONField(default=list, blank=True)
    must_not_include = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["project", "split", "flagged"])]

    def __str__(self) -> str:
        return f"case {self.pk}"


class Response(models.Model):
    case = models.ForeignKey(Case, on_delete=models.CASCADE, related_name="responses")
    text = models.TextField()
    origin = models.CharField(max_length=16, choices=Origin.choices)
    model_name = models.CharField(max_length=200, blank=True)
    adapter_name = models.CharField(max_length=200, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"response {self.pk} ({self.origin})"


class Comparison(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="comparisons")
    case = models.ForeignKey(Case, on_delete=models.CASCADE, related_name="comparisons")
    response_a = models.ForeignKey(Response, on_delete=models.CASCADE, related_name="+")
    response_b = models.ForeignKey(Response, on_delete=models.CASCADE, related_name="+")
    blind = models.BooleanField(
        default=False, help_text="Never show where the responses came from (round comparisons)."
    )
    # Kept in the transaction of every judgment and undo, under the row lock.
    judgment_count = models.PositiveIntegerField(default=0)
    # judgment_count < project.overlap, kept with it: the queue's partial index covers only these.
    needs_judgments = models.BooleanField(default=True)
    # An already-labelled pair (an imported TRL {chosen, rejected}): "a" means response_a was
    # chosen. Such a comparison is not queued and exports as one vote of its own.
    label = models.CharField(max_length=8, choices=Side.choices, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(
                condition=~Q(response_a=F("response_b")), name="annotate_comparison_a_ne_b"
            ),
        ]
        indexes = [
            # The queue's order (started comparisons first, then oldest first) over open rows
            # only; the primary key cannot serve this order, so the planner never walks judged
            # rows in id order however stale its statistics are.
            models.Index(
                fields=["project", "-judgment_count", "id"],
                condition=Q(needs_judgments=True),
                name="annotate_cmp_queue_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"comparison {self.pk}"

    def clean(self) -> None:
        if self.response_a_id and self.response_a_id == self.response_b_id:
            raise ValidationError("A comparison needs two different responses.")
        for field in ("response_a", "response_b"):
            response = getattr(self, field, None)
            if response is not None and self.case_id and response.case_id != self.case_id:
                raise ValidationError({field: "The response belongs to another case."})
        if self.case_id and self.project_id and self.case.project_id != self.project_id:
            raise ValidationError({"case": "The case belongs to another project."})


class Judgment(models.Model):
    # No single-column indexes on the two keys: the unique constraint's index (comparison,
    # annotator) and the (annotator, -created_at) index serve those lookups, and every extra
    # index is one more write per judgment.
    comparison = models.ForeignKey(
        Comparison, on_delete=models.CASCADE, related_name="judgments", db_index=False
    )
    annotator = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="judgments", db_index=False
    )
    # a/b name the comparison's response_a/response_b, not the side of the screen.
    choice = models.CharField(max_length=8, choices=Choice.choices)
    edited = models.TextField(blank=True, help_text="The corrected answer, when one was written.")
    corrected_response = models.ForeignKey(
        Response, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    rationale = models.TextField(blank=True)
    shown_left = models.CharField(max_length=1, choices=Side.choices)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(
                fields=["comparison", "annotator"], name="annotate_one_judgment_per_annotator"
            ),
        ]
        indexes = [models.Index(fields=["annotator", "-created_at"])]

    def __str__(self) -> str:
        return f"judgment {self.pk}: {self.choice}"


class Lease(models.Model):
    """An annotator's hold on a comparison; after `expires_at` the slot returns to the queue."""

    # Indexed by the unique constraint (comparison, annotator) and by (annotator, expires_at).
    comparison = models.ForeignKey(
        Comparison, on_delete=models.CASCADE, related_name="leases", db_index=False
    )
    annotator = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="leases", db_index=False
    )
    expires_at = models.DateTimeField()
    # Which response this annotator sees on the left: random per annotator, kept for the judgment.
    shown_left = models.CharField(max_length=1, choices=Side.choices)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(
                fields=["comparison", "annotator"], name="annotate_one_lease_per_annotator"
            ),
        ]
        indexes = [models.Index(fields=["annotator", "expires_at"])]

    def __str__(self) -> str:
        return f"lease {self.comparison_id} by {self.annotator_id} until {self.expires_at}"
