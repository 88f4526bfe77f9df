"""The curator's "Generate candidates" form: which cases, which model, how to sample."""

from __future__ import annotations

from typing import Any

from django import forms

from rounds.services import MAX_CANDIDATES, MAX_NEW_TOKENS, SamplingSettings
from training.engine.config import MAX_SEED

_DEFAULTS = SamplingSettings()

SCOPES = (
    ("flagged", "All flagged cases"),
    ("filter", "Cases matching a filter (split and/or tag)"),
    ("case", "One case"),
)


class GenerationForm(forms.Form):
    scope = forms.ChoiceField(choices=SCOPES, initial="flagged", widget=forms.RadioSelect)
    split = forms.ChoiceField(
        required=False,
        choices=[("", "any split"), ("train", "train"), ("heldout", "held-out"),
                 ("regression", "regression")],
    )  # fmt: skip
    tag = forms.CharField(required=False, max_length=100)
    case_id = forms.IntegerField(required=False, min_value=1, label="Case number")
    job = forms.ModelChoiceField(
        queryset=None,
        required=False,
        empty_label="none: the base model alone",
        label="Adapter",
        help_text="Sample from the base model plus the adapter a succeeded job produced.",
    )
    model = forms.CharField(
        max_length=1000,
        required=False,
        help_text="Base model folder on the GPU workers; empty: the job's base model, else "
        "PATCHWISE_BASE_MODEL.",
    )
    n = forms.IntegerField(
        min_value=1, max_value=MAX_CANDIDATES, initial=_DEFAULTS.n, label="Candidates per case"
    )
    temperature = forms.FloatField(
        min_value=0.01, max_value=5.0, initial=_DEFAULTS.temperature,
        help_text="0.7-1.0 gives varied candidates.",
    )  # fmt: skip
    top_p = forms.FloatField(min_value=0.01, max_value=1.0, initial=_DEFAULTS.top_p, label="Top-p")
    max_new_tokens = forms.IntegerField(
        min_value=1, max_value=MAX_NEW_TOKENS, initial=_DEFAULTS.max_new_tokens
    )
    seed = forms.IntegerField(initial=_DEFAULTS.seed, min_value=0, max_value=MAX_SEED)

    def __init__(self, *args: Any, jobs: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["job"].queryset = jobs
        self.fields["job"].label_from_instance = lambda job: (
            f"job {job.pk} ({job.created_at:%Y-%m-%d %H:%M}, {job.pair_count} pairs)"
        )

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        scope = data.get("scope")
        if scope == "filter" and not data.get("split") and not data.get("tag"):
            self.add_error("split", "A filter needs a split, a tag or both.")
        if scope == "case" and not data.get("case_id"):
            self.add_error("case_id", "Say which case.")
        return data

    def sampling(self) -> SamplingSettings:
        data = self.cleaned_data
        return SamplingSettings(
            n=data["n"],
            temperature=data["temperature"],
            top_p=data["top_p"],
            max_new_tokens=data["max_new_tokens"],
            seed=data["seed"],
        )
