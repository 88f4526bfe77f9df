"""The launch form: the model to patch, good defaults, and an advanced fold."""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings

from training.engine.config import LOSSES, TrainConfig

_DEFAULTS = TrainConfig()


class LaunchForm(forms.Form):
    model = forms.CharField(
        max_length=1000,
        help_text="Folder of the model to patch (Hugging Face format) on the GPU workers.",
    )
    adapter = forms.CharField(
        max_length=1000,
        required=False,
        help_text="The adapter already in production, if any: the patch stacks on it.",
    )
    epochs = forms.IntegerField(
        min_value=1,
        max_value=1000,
        initial=_DEFAULTS.epochs,
        help_text="A budget: training stops once every flagged prompt is fixed.",
    )
    # The advanced fold.
    beta = forms.FloatField(min_value=0.0, initial=_DEFAULTS.beta, label="β (beta)")
    loss = forms.ChoiceField(choices=[(name, name) for name in LOSSES], initial=_DEFAULTS.loss)
    sft_weight = forms.FloatField(min_value=0.0, initial=_DEFAULTS.sft_weight, label="SFT weight")
    sft_warmup_epochs = forms.IntegerField(
        required=False,
        min_value=0,
        max_value=100,
        initial=_DEFAULTS.sft_warmup_epochs,
        label="SFT warm-up epochs",
        help_text="Plain SFT on the chosen answers before DPO (0: none).",
    )
    lr = forms.FloatField(min_value=0.0, initial=_DEFAULTS.lr, label="Learning rate")
    lora_r = forms.IntegerField(
        min_value=1, max_value=512, initial=_DEFAULTS.lora_r, label="LoRA rank"
    )
    drift_tolerance = forms.FloatField(
        required=False,
        min_value=0.0,
        initial=_DEFAULTS.drift_tolerance,
        label="Drift tolerance (nats/token)",
        help_text="A regression answer that differs, and has no checks, counts as changed once "
        "its pre-patch answer's mean log-prob per token moved by more than this.",
    )
    gpus = forms.IntegerField(
        required=False,
        min_value=1,
        initial=1,
        label="GPUs",
        help_text="GPUs of the worker's node to train on; above 1, each step's pairs are split "
        "across them (faster; each GPU still holds the whole model unless it is sharded).",
    )
    shard_base = forms.BooleanField(
        required=False,
        initial=_DEFAULTS.shard_base,
        label="Shard the model across the GPUs",
        help_text="Each GPU holds 1/N of the model (FSDP): for a model too big for one GPU. "
        "Needs 2 GPUs or more; not with a 4-bit model.",
    )

    ADVANCED = (
        "beta",
        "loss",
        "sft_weight",
        "sft_warmup_epochs",
        "lr",
        "lora_r",
        "drift_tolerance",
        "gpus",
        "shard_base",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["model"].initial = settings.PATCHWISE_BASE_MODEL
        if settings.PATCHWISE_WORKER_GPUS > 1:  # more is refused at launch, saying why
            self.fields["gpus"].widget.attrs["max"] = settings.PATCHWISE_WORKER_GPUS
        else:  # a one-GPU worker: nothing to choose
            del self.fields["gpus"]
            del self.fields["shard_base"]

    def basic_fields(self) -> list[forms.BoundField]:
        return [self[name] for name in self.fields if name not in self.ADVANCED]

    def advanced_fields(self) -> list[forms.BoundField]:
        return [self[name] for name in self.ADVANCED if name in self.fields]

    def to_config(self) -> dict[str, Any]:
        data = self.cleaned_data
        config = {
            name: data[name]
            for name in ("model", "epochs", *self.ADVANCED)
            if data.get(name) is not None
        }
        if data.get("adapter"):
            config["adapter"] = data["adapter"]
        return config
