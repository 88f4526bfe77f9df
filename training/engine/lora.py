"""The LoRA patch on one model in memory: attach, switch to the reference, save, detach.

The new patch is the adapter named ``default`` (so PEFT saves it at the folder's root). With a
deployed adapter, that one is loaded as ``deployed``, frozen, and stays active under the patch;
the reference is then base + deployed, reached by deactivating only ``default``. Detaching
removes every LoRA layer without merging, leaving the base model as it was, so a worker can
keep it for the next job.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors import safe_open

from training.engine.config import TrainConfig, check_vllm_servable
from training.engine.errors import EngineError
from training.engine.modeling import LoadedBase

PATCH = "default"
DEPLOYED = "deployed"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def adapter_identity(path: Path) -> str:
    digest = hashlib.sha256()
    for name in ADAPTER_FILES:
        digest.update((path / name).read_bytes())
    return digest.hexdigest()[:16]


def check_adapter_folder(path: Path) -> None:
    if not path.is_dir():
        raise EngineError(f"adapter folder {path} does not exist")
    for name in ADAPTER_FILES:
        if not (path / name).is_file():
            raise EngineError(f"adapter folder {path} has no {name}; is it a PEFT LoRA adapter?")


def lora_config(config: TrainConfig) -> LoraConfig:
    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha or 2 * config.lora_r,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.target_modules),
        bias="none",
        use_dora=False,
        modules_to_save=None,
        task_type="CAUSAL_LM",
    )


class Patch:
    """A base model wearing the trainable patch (and the frozen deployed adapter, if any)."""

    def __init__(self, base: LoadedBase, config: TrainConfig) -> None:
        self.base = base
        self.deployed_path = Path(config.adapter).expanduser() if config.adapter else None
        self._had_peft_config = hasattr(base.model, "peft_config")
        present = {name.split(".")[-1] for name, _ in base.model.named_modules()}
        missing = [target for target in config.target_modules if target not in present]
        if len(missing) == len(config.target_modules):
            raise EngineError(
                f"config: none of target_modules {list(config.target_modules)} exists in "
                f"{base.path}; name this architecture's linear layers"
            )
        if self.deployed_path is None:
            self.model: PeftModel = get_peft_model(
                base.model, lora_config(config), adapter_name=PATCH
            )
        else:
            check_adapter_folder(self.deployed_path)
            try:
                self.model = PeftModel.from_pretrained(
                    base.model, self.deployed_path, adapter_name=DEPLOYED, is_trainable=False
                )
            except (OSError, ValueError, KeyError, RuntimeError) as error:
                self._restore_base()
                raise EngineError(
                    f"cannot load adapter {self.deployed_path} on {base.path}: {error}"
                ) from None
            self.model.add_adapter(PATCH, lora_config(config))
        self._activate_patch()

    @property
    def deployed_identity(self) -> str | None:
        return adapter_identity(self.deployed_path) if self.deployed_path else None

    def _activate_patch(self) -> None:
        active = [DEPLOYED, PATCH] if self.deployed_path else PATCH
        self.model.base_model.set_adapter(active)
        for name, param in self.model.named_parameters():
            param.requires_grad_(f".{PATCH}." in name)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [param for param in self.model.parameters() if param.requires_grad]

    @contextmanager
    def reference(self) -> Iterator[torch.nn.Module]:
        """The reference policy: the patch switched off (deployed adapter still on)."""
        if self.deployed_path is None:
            with self.model.disable_adapter():
                yield self.model
            return
        self.model.base_model.set_adapter(DEPLOYED)
        try:
            yield self.model
        finally:
            self._activate_patch()

    def save(self, folder: Path) -> None:
        """Write the patch alone as PEFT files, after checking vLLM can serve them."""
        self.model.save_pretrained(str(folder), selected_adapters=[PATCH])
        (folder / "README.md").unlink(missing_ok=True)  # the app writes the real model card
        check_saved_adapter(folder)

    def detach(self) -> None:
        """Remove all LoRA layers without merging; the base model is as it was before."""
        self.model.unload()
        self._restore_base()

    def _restore_base(self) -> None:
        model = self.base.model
        if not self._had_peft_config and hasattr(model, "peft_config"):
            del model.peft_config
        model.requires_grad_(False)
        model.eval()


def check_saved_adapter(folder: Path) -> None:
    """The written adapter must be plain LoRA tensors with a config vLLM accepts."""
    adapter_config = json.loads((folder / "adapter_config.json").read_text())
    check_vllm_servable(adapter_config)
    with safe_open(str(folder / "adapter_model.safetensors"), framework="pt") as tensors:
        for name in tensors.keys():
            if "lora_A" not in name and "lora_B" not in name:
                raise EngineError(
                    f"the adapter would save '{name}', which vLLM does not load; "
                    "train LoRA weights only"
                )
