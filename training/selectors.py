"""Reads of training jobs: lists, one job for a user, and the report as a page shows it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import QuerySet
from django.http import Http404

from annotate.selectors import project_for_user as annotate_project_for_user
from annotate.selectors import projects_for_user
from training.models import TrainingJob

# Big JSON columns a list page never shows.
_HEAVY_FIELDS = ("data_snapshot", "metrics_series", "report", "config")


def visible_projects(*, user: AbstractBaseUser) -> QuerySet:
    """The projects ``user`` may see (annotate's rule: a restricted project is for its members
    and staff)."""
    return projects_for_user(user=user)


def project_for_user(*, slug: str, user: AbstractBaseUser) -> Any:
    """Http404 when there is no such project, PermissionDenied when it is not for ``user``."""
    return annotate_project_for_user(slug=slug, user=user)


@dataclass
class LaunchPreview:
    """What a job launched now would snapshot: the launch form shows it before the click."""

    pairs: int
    eval_by_kind: dict[str, int]
    judged_without_pair: int  # judged comparisons whose vote gives no pair (tie, both bad, split)
    not_judged: int  # train comparisons nobody has judged yet
    memory: str = ""  # "needs about N GiB on the worker's GPU: fits (...)", or why it cannot

    @property
    def eval_prompts(self) -> int:
        return sum(self.eval_by_kind.values())


def launch_preview(*, project: Any) -> LaunchPreview:
    """Counted with the functions job_enqueue snapshots with, so the numbers are the job's."""
    from annotate.models import Comparison, Judgment, Split
    from annotate.selectors import eval_prompts, preference_pairs
    from training.engine.errors import EngineError
    from training.memory_plan import launch_plan, plan_line

    pairs = 0
    with_pairs: set[int] = set()
    snapshot = []
    for pair in preference_pairs(project=project):
        pairs += 1
        with_pairs.add(pair["comparison_id"])
        snapshot.append(pair)
    train = Comparison.objects.filter(project=project, case__split=Split.TRAIN)
    judged = set(
        Judgment.objects.filter(comparison__in=train).values_list("comparison_id", flat=True)
    )
    not_judged = train.exclude(pk__in=judged).filter(label="").count()
    kinds: dict[str, int] = {"flagged": 0, "heldout": 0, "regression": 0}
    eval_items = list(eval_prompts(project=project))
    for item in eval_items:
        kinds[item["kind"]] = kinds.get(item["kind"], 0) + 1
    try:
        memory = plan_line(launch_plan(config={}, pairs=snapshot, eval_items=eval_items))
    except EngineError as error:
        memory = str(error)
    return LaunchPreview(
        memory=memory if snapshot else "",
        pairs=pairs,
        eval_by_kind=kinds,
        judged_without_pair=len(judged - with_pairs),
        not_judged=not_judged,
    )


def jobs_for_project(*, project: Any) -> QuerySet[TrainingJob]:
    return (
        TrainingJob.objects.filter(project=project)
        .select_related("created_by")
        .defer(*_HEAVY_FIELDS)
        .order_by("-created_at", "-id")
    )


def job_for_user(*, job_id: int, user: AbstractBaseUser) -> TrainingJob:
    job = (
        TrainingJob.objects.select_related("project", "created_by")
        .filter(pk=job_id, project__in=visible_projects(user=user))
        .first()
    )
    if job is None:
        raise Http404(f"No job {job_id}.")
    return job


def job_memory_plan(job: TrainingJob) -> dict[str, Any] | None:
    """The engine's memory plan: the worker's once it planned, else the launch's."""
    return (job.report or {}).get("memory_plan") or (job.progress or {}).get("memory_plan")


def job_api_payload(job: TrainingJob) -> dict[str, Any]:
    """What GET /api/v1/jobs/{id} answers (also a script's way to poll)."""
    return {
        "id": job.pk,
        "project": job.project.slug,
        "status": job.shown_status,  # "lost" once a running job's worker went silent
        "progress": job.progress,
        "metrics": job.latest_metrics,
        "config": job.config,
        "data": {"sha256": job.data_sha256, "pairs": job.pair_count, "eval": job.eval_count},
        "error": job.error or job.lost_error or None,
        "worker": job.worker_name or None,
        "attempts": job.attempts,
        "cancel_requested": job.cancel_requested,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "artifact_sha256": job.artifact_sha256 or None,
        "files_sha256": (job.report or {}).get("files_sha256"),
        "summary": (job.report or {}).get("summary"),
        "stopped_because": ((job.report or {}).get("training") or {}).get("stopped_because"),
        # which rules the flagged prompts passed by when training stopped early (verification)
        "stopped_by": ((job.report or {}).get("training") or {}).get("stopped_by"),
    }


@dataclass
class ReportView:
    """The finished job's report, arranged the way the page reads it: verdict first."""

    warnings: list[str] = field(default_factory=list)
    good_news: list[str] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    heldout_rate: float | None = None
    rows_by_kind: list[tuple[str, list[dict[str, Any]]]] = field(default_factory=list)
    pair_margins: list[dict[str, Any]] = field(default_factory=list)
    stopped_because: str = ""
    mitigation: str = ""  # SFT term, SFT warm-up, both or neither: what kept the good answer likely
    regression_coverage: dict[str, Any] = field(default_factory=dict)
    regression_statuses: dict[str, int] = field(default_factory=dict)  # status -> rows
    regression_filter: str = ""  # the status the regression table shows ("" = all)
    drift_tolerance: float | None = None
    preferring: dict[str, int] = field(default_factory=dict)  # {"preferring", "with_pair"}


REGRESSION_STATUSES = ("identical", "within tolerance", "changed")


def regression_status(row: dict[str, Any]) -> str:
    """identical / within tolerance / changed; an older report (no drift) has only identical
    and changed."""
    if row.get("changed"):
        return "changed"
    identical = row.get("identical")
    if identical is None:  # before drift was measured: unchanged meant the same answer
        return "identical"
    return "identical" if identical else "within tolerance"


ROW_DEFAULTS = {  # keys an older report's rows lack (exact match was the only rule)
    "verdict": None,
    "rule": "",
    "drift": None,
    "margin_ref": None,
    "margin_policy": None,
    "prefers": None,
    "status": "",
}


def _row_for_page(row: dict[str, Any]) -> dict[str, Any]:
    row = ROW_DEFAULTS | row
    if not row["rule"] and row.get("kind") != "regression" and row.get("expected") is not None:
        row["rule"] = "equals the expected answer"
    return row


def report_view(job: TrainingJob, *, regression_filter: str = "") -> ReportView | None:
    """``regression_filter``: one of REGRESSION_STATUSES to show only those regression rows."""
    report = job.report
    if not report:
        return None
    view = ReportView()
    rows = [_row_for_page(row) for row in report.get("eval") or []]
    counts = report.get("summary") or {}
    view.counts = counts
    flagged = counts.get("flagged")
    regression = counts.get("regression")
    heldout = counts.get("heldout")
    if flagged:
        if flagged["fixed"] == 0:
            view.warnings.append(
                f"This patch fixes none of the {flagged['total']} flagged prompts: do not ship it. "
                "Add better answers, more pairs, or raise the SFT weight or epochs."
            )
        elif flagged["fixed"] < flagged["total"]:
            view.warnings.append(
                f"This patch fixes only {flagged['fixed']} of {flagged['total']} flagged prompts."
            )
        else:
            view.good_news.append(f"All {flagged['total']} flagged prompts are fixed.")
    else:
        view.warnings.append(
            "No flagged prompt had checks, an expected answer or a preference pair, so no fix "
            "was checked."
        )
    regression_rows = [row for row in rows if row.get("kind") == "regression"]
    statuses = [regression_status(row) for row in regression_rows]
    view.regression_statuses = {status: statuses.count(status) for status in REGRESSION_STATUSES}
    if regression and regression["changed"]:
        view.warnings.append(
            f"This patch changed {regression['changed']} of {regression['total']} regression "
            "prompts that must not change: check them below before shipping it."
        )
    elif regression:
        identical = view.regression_statuses["identical"]
        view.good_news.append(
            f"All {regression['total']} regression prompts are within tolerance "
            f"({identical} of them identical)."
        )
    else:
        view.warnings.append("The project has no regression prompts: side effects are unchecked.")
    with_rule = (heldout or {}).get("with_rule", (heldout or {}).get("with_expected"))
    if heldout and with_rule:
        view.heldout_rate = heldout["fixed"] / with_rule
    view.preferring = {
        "preferring": sum(c.get("preferring", 0) for c in counts.values()),
        "with_pair": sum(c.get("with_pair", 0) for c in counts.values()),
    }
    view.regression_filter = regression_filter if regression_filter in REGRESSION_STATUSES else ""
    for kind in ("flagged", "heldout", "regression"):
        of_kind = [row for row in rows if row.get("kind") == kind]
        if kind == "regression":
            of_kind = [
                row | {"status": status}
                for row, status in zip(of_kind, statuses, strict=True)
                if not view.regression_filter or status == view.regression_filter
            ]
            if regression_rows:
                view.rows_by_kind.append((kind, of_kind))
        elif of_kind:
            view.rows_by_kind.append((kind, of_kind))
    beta = float((job.config or {}).get("beta") or 0.1)
    pairs = (job.data_snapshot or {}).get("pairs") or []
    for entry in report.get("pairs") or []:
        chosen_reward = beta * (entry["policy_logp_chosen"] - entry["ref_logp_chosen"])
        rejected_reward = beta * (entry["policy_logp_rejected"] - entry["ref_logp_rejected"])
        index = entry.get("index", 0)
        pair = pairs[index] if index < len(pairs) else {}
        view.pair_margins.append(
            {
                "prompt": pair.get("prompt", ""),
                "chosen": pair.get("chosen", ""),
                "rejected": pair.get("rejected", ""),
                "chosen_reward": chosen_reward,
                "rejected_reward": rejected_reward,
                "margin": chosen_reward - rejected_reward,
            }
        )
    view.stopped_because = (report.get("training") or {}).get("stopped_because", "")
    view.mitigation = (report.get("training") or {}).get("mitigation", "")
    view.regression_coverage = report.get("regression_coverage") or {}
    view.drift_tolerance = (report.get("training") or {}).get("drift_tolerance")
    return view
