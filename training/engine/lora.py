"""The LoRA patch on one model in memory: attach, switch to the reference, save, detach.

The new patch is the adapter named ``default`` (so PEFT saves it at the folder's root). With a
deployed adapter, that one is loaded as ``deployed``, frozen, and stays active under the patch;
the reference is then base + deployed, reached by deactivating only ``default``. Detaching
removes every LoRA layer without merging, leaving the base model as it was, so a worker can
keep it for the next job.

A patch trained on a deployed adapter is also written combined with it, as one LoRA
(``combined/``): servers such as vLLM apply one LoRA per request, so that one replaces the
deployed adapter where it is served.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from training.engine.config import (
    COMBINED,
    DEFAULT_TARGET_MODULES,
    TrainConfig,
    check_vllm_servable,
)
from training.engine.errors import EngineError, first_line
from training.engine.folders import ADAPTER_FILES, check_adapter_folder
from training.engine.modeling import LoadedBase, eval_mode

PATCH = "default"
DEPLOYED = "deployed"


def adapter_identity(path: Path) -> str:
    digest = hashlib.sha256()
    for name in ADAPTER_FILES:
        digest.update((path / name).read_bytes())
    return digest.hexdigest()[:16]


def check_adapter_fits(path: Path, base: LoadedBase) -> None:
    """Refuse an adapter with layers this model lacks: peft would load the rest and silently
    drop those (an adapter trained on another architecture)."""
    modules = {name for name, _ in base.model.named_modules()}
    try:
        with safe_open(str(path / "adapter_model.safetensors"), framework="pt") as tensors:
            names = list(tensors.keys())
    except Exception as error:  # noqa: BLE001 (a truncated or foreign file)
        raise EngineError(f"cannot read adapter {path}: {first_line(error)}") from None
    layers = {name.split(".lora_")[0].removeprefix("base_model.model.") for name in names}
    missing = sorted(layers - modules)
    if missing:
        raise EngineError(
            f"adapter {path} has {len(missing)} layer(s) that {base.path} lacks "
            f"(e.g. {missing[0]}): was it trained on another model?"
        )


def lora_config(config: TrainConfig, targets: list[str]) -> LoraConfig:
    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha or 2 * config.lora_r,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        bias="none",
        use_dora=False,
        modules_to_save=None,
        task_type="CAUSAL_LM",
    )


# MoE routers pick the experts: a LoRA there changes the routing, and vLLM does not serve it.
ROUTERS = ("gate", "router", "shared_expert_gate")


def lora_targets(base: LoadedBase, wanted: tuple[str, ...]) -> list[str]:
    """The layer names the patch goes on in this model.

    With the default targets: every linear layer of the repeated decoder blocks, whatever this
    architecture calls them (q_proj ... down_proj in Llama, Qwen and Mistral, qkv_proj and
    gate_up_proj in Phi-3, c_attn in GPT-2, query_key_value in GPT-NeoX), except MoE routers;
    the output head and the embeddings are outside the blocks. Targets named in the config
    are taken as they are, as long as one of them exists.
    """
    linear = set()
    for name, module in base.model.named_modules():
        parts = name.split(".")
        in_block = any(part.isdigit() for part in parts[:-1])
        if in_block and parts[-1] not in ROUTERS and _is_linear(module):
            linear.add(parts[-1])
    if set(wanted) == set(DEFAULT_TARGET_MODULES):
        if not linear:
            raise EngineError(f"{base.path} has no linear layers in repeated blocks for LoRA")
        return sorted(linear)
    present = [target for target in wanted if target in linear]
    if not present:
        raise EngineError(
            f"config: none of target_modules {list(wanted)} is a linear layer of {base.path}; "
            f"its layers are named {', '.join(sorted(linear)) or 'nothing LoRA can patch'}"
        )
    return present


def _is_linear(module: torch.nn.Module) -> bool:
    # GPT-2 style models use transformers' Conv1D, a linear layer with its weight transposed
    return isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"


class Patch:
    """A base model wearing the trainable patch (and the frozen deployed adapter, if any)."""

    def __init__(self, base: LoadedBase, config: TrainConfig) -> None:
        self.base = base
        self.deployed_path = Path(config.adapter).expanduser() if config.adapter else None
        self._had_peft_config = hasattr(base.model, "peft_config")
        self.targets = lora_targets(base, config.target_modules)
        if self.deployed_path is None:
            self.model: PeftModel = get_peft_model(
                base.model, lora_config(config, self.targets), adapter_name=PATCH
            )
        else:
            check_adapter_folder(self.deployed_path)
            check_adapter_fits(self.deployed_path, base)
            try:
                self.model = PeftModel.from_pretrained(
                    base.model, self.deployed_path, adapter_name=DEPLOYED, is_trainable=False
                )
            except Exception as error:  # noqa: BLE001 (truncated files, shapes of another model)
                self._restore_base()
                raise EngineError(
                    f"cannot load adapter {self.deployed_path} on {base.path}: {first_line(error)}"
                ) from None
            self.model.add_adapter(PATCH, lora_config(config, self.targets))
        eval_mode(self.model)  # peft's from_pretrained switched everything to eval mode
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

    def full_state(self) -> dict[str, torch.Tensor]:
        """The patch's LoRA weights, whole, from a base sharded across ranks (FSDP): every rank
        must call this; what ``save`` then writes on rank 0."""
        from training.engine.distributed import full_state

        return full_state(self.model, lambda name: f".{PATCH}." in name and ".lora_" in name)

    def save(
        self, folder: Path, *, state: dict[str, torch.Tensor] | None = None
    ) -> dict[str, Any] | None:
        """Write the patch alone as PEFT files, after checking vLLM can serve them; on a
        deployed adapter, also both as one LoRA in ``folder/combined``. Returns, on a deployed
        adapter, that folder's name and rank, or why it could not be written.

        ``state``: the patch's weights gathered whole (``full_state``) when the model in memory
        holds only this rank's share of them."""
        self.model.save_pretrained(str(folder), selected_adapters=[PATCH], state_dict=state)
        (folder / "README.md").unlink(missing_ok=True)  # the app writes the real model card
        check_saved_adapter(folder)
        if self.deployed_path is None:
            return None
        try:
            rank = combine_adapters([self.deployed_path, folder], folder / COMBINED)
        except EngineError as error:
            shutil.rmtree(folder / COMBINED, ignore_errors=True)
            return {"combined": None, "combined_rank": None, "combined_refused": str(error)}
        return {"combined": COMBINED, "combined_rank": rank, "combined_refused": None}

    def detach(self) -> None:
        """Remove all LoRA layers without merging; the base model is as it was before."""
        self.model.unload()
        self._restore_base()

    def _restore_base(self) -> None:
        model = self.base.model
        if not self._had_peft_config and hasattr(model, "peft_config"):
            del model.peft_config
        model.requires_grad_(False)
        eval_mode(model)


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


def combine_adapters(folders: list[Path], out: Path) -> int:
    """Write the LoRA adapters in ``folders`` as one adapter whose update is exactly their sum;
    returns its rank.

    Each layer's updates s_i * B_i @ A_i add up to [B_1 ... B_n] @ [s_1 A_1; ...; s_n A_n]: a
    LoRA of rank r_1 + ... + r_n with scaling 1 (lora_alpha = r). A layer one adapter leaves
    alone gets zeros in that adapter's block, so every layer has the same rank, as vLLM needs.
    Refuses (EngineError) adapters that are more than LoRA matrices: DoRA, biases, whole
    modules saved, per-layer rank or alpha patterns.
    """
    configs, weights = [], []
    for folder in folders:
        check_adapter_folder(folder)
        config = json.loads((folder / "adapter_config.json").read_text())
        _require_plain_lora(config, folder)
        configs.append(config)
        weights.append(load_file(str(folder / "adapter_model.safetensors")))
    ranks = [int(config["r"]) for config in configs]
    layers: dict[str, list[int | None]] = {}  # layer -> [out features, in features]
    for folder, tensors, rank in zip(folders, weights, ranks, strict=True):
        for name, tensor in tensors.items():
            layer, kind = _lora_key(name, folder)
            # A is (rank, in features), B is (out features, rank)
            rank_dim, feature_dim, slot = (0, 1, 1) if kind == "lora_A" else (1, 0, 0)
            features = layers.setdefault(layer, [None, None])
            if tensor.dim() != 2 or tensor.shape[rank_dim] != rank:
                raise EngineError(f"adapter {folder}: {name} does not have the rank r={rank}")
            if features[slot] not in (None, tensor.shape[feature_dim]):
                raise EngineError(f"the adapters disagree on the shape of {layer}")
            features[slot] = tensor.shape[feature_dim]
    scales = [
        float(config.get("lora_alpha", config["r"]))
        / (math.sqrt(config["r"]) if config.get("use_rslora") else config["r"])
        for config in configs
    ]
    combined: dict[str, torch.Tensor] = {}
    for layer, (out_features, in_features) in sorted(layers.items()):
        if out_features is None or in_features is None:
            raise EngineError(f"{layer} has a LoRA A matrix without its B, or a B without its A")
        blocks_a, blocks_b = [], []
        for tensors, rank, scale in zip(weights, ranks, scales, strict=True):
            a = tensors.get(f"{layer}.lora_A.weight")
            b = tensors.get(f"{layer}.lora_B.weight")
            if a is None or b is None:  # this adapter leaves the layer alone
                a = torch.zeros(rank, in_features)
                b = torch.zeros(out_features, rank)
            blocks_a.append(a.float() * scale)
            blocks_b.append(b.float())
        dtype = next(iter(weights[-1].values())).dtype  # the patch's
        combined[f"{layer}.lora_A.weight"] = torch.cat(blocks_a, dim=0).to(dtype).contiguous()
        combined[f"{layer}.lora_B.weight"] = torch.cat(blocks_b, dim=1).to(dtype).contiguous()
    rank = sum(ranks)
    config = {
        **configs[-1],
        "r": rank,
        "lora_alpha": rank,
        "use_rslora": False,
        "target_modules": sorted({layer.rsplit(".", 1)[-1] for layer in layers}),
        "rank_pattern": {},
        "alpha_pattern": {},
        "layers_to_transform": None,
        "layers_pattern": None,
        "init_lora_weights": True,  # a layer absent from the file stays unchanged
    }
    out.mkdir(parents=True, exist_ok=True)
    save_file(combined, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    check_saved_adapter(out)
    return rank


def _require_plain_lora(config: dict, folder: Path) -> None:
    unsupported = {
        "peft_type": config.get("peft_type", "LORA") != "LORA",
        "use_dora": bool(config.get("use_dora")),
        "bias": config.get("bias", "none") != "none",
        "modules_to_save": bool(config.get("modules_to_save")),
        "rank_pattern": bool(config.get("rank_pattern")),
        "alpha_pattern": bool(config.get("alpha_pattern")),
        "target_parameters": bool(config.get("target_parameters")),
    }
    found = [key for key, bad in unsupported.items() if bad]
    if found:
        raise EngineError(
            f"adapter {folder} sets {', '.join(found)}: only plain LoRA adapters "
            "(A and B matrices, one rank and alpha) can be combined into one"
        )


def _lora_key(name: str, folder: Path) -> tuple[str, str]:
    """'...q_proj.lora_A.weight' -> ('...q_proj', 'lora_A'); anything else is refused."""
    for kind in ("lora_A", "lora_B"):
        suffix = f".{kind}.weight"
        if name.endswith(suffix):
            return name[: -len(suffix)], kind
    raise EngineError(
        f"adapter {folder} holds '{name}', which is not a LoRA A or B matrix; "
        "it cannot be combined with another adapter"
    )
