"""The memory plan: how much a training job will need, decided before anything loads.

From the model's config.json (parameters, layers, hidden size, vocabulary), the LoRA rank, the
longest prompt and answer, the micro-batch, gradient checkpointing and quantization, it
estimates the peak and picks the largest micro-batch that fits the memory there is
(``--max-memory`` GiB, else the device's free memory; the available RAM on a CPU). Without a
fit even at micro-batch 1 with checkpointing, it refuses in one line that says what would fit.

The estimate adds up the tensors a step holds at its peak:

- weights: 2 bytes a parameter in bf16 (4 in fp32); in 4-bit the decoder's linear layers take
  0.5 byte plus NF4's block scales (about 0.53 byte a parameter), the rest stays in bf16;
- the patch: LoRA A and B in float32 with their gradients and AdamW's two moments (16 bytes a
  parameter);
- activations kept for the backward pass, per token and block (``_block_bytes_per_token``),
  for the micro-batch's tokens; with checkpointing, one hidden state per block plus one block's
  worth, rebuilt in the backward pass;
- the log-prob head: one chunk of float32 logits at a time (logprobs.LOGIT_CHUNK_BYTES), held
  once (about five times for a softcapped head, which goes through autograd);
- the passes without gradients (reference log-probs, greedy answers) need far less and are
  checked too, with their KV caches.

With the base sharded across N GPUs (``--shard-base``, FSDP), each GPU holds 1/N of the weights
and of the patch, plus the output head whole and two blocks gathered whole (the one running
and the next); the activations are its own share of the batch, as without sharding.

Checked against measured peaks in tests/engine/test_memory.py (CPU, small shapes) and
bench/gpu_bench.py (GPU). Pure Python: a web process can plan a job without torch.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from training.engine.errors import EngineError

GIB = 2**30
LOGIT_CHUNK_BYTES = 256 * 2**20  # the same budget as logprobs.LOGIT_CHUNK_BYTES
NF4_BYTES_PER_PARAMETER = 0.5 + 4 / 64 / 4 + 4 / (64 * 256)  # codes, 8-bit scales, their scales
LORA_BYTES_PER_PARAMETER = 16  # fp32 weight, gradient, AdamW's exp_avg and exp_avg_sq
# What the allocator and the libraries hold beyond the tensors we count (CUDA context,
# fragmentation, workspaces); measured peaks sat 2-6 % above the counted tensors.
OVERHEAD_FRACTION = 0.05
OVERHEAD_BYTES = 512 * 2**20
GENERATION_BATCH = 16  # eval prompts answered at once, at most
GPUS_PER_NODE = 8


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a decoder-only transformer that decide its memory."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocabulary: int
    tied_embeddings: bool = False
    head_dim: int | None = None
    logit_softcap: bool = False  # Gemma 2/3: the head's log-probs go through autograd

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelShape:
        """From a config.json dict; Llama/Qwen/Mistral names first, then GPT-2/NeoX/OPT ones."""

        def pick(*names: str, default: Any = None) -> Any:
            for name in names:
                value = config.get(name)
                if value is not None:
                    return value
            if default is not None:
                return default
            raise EngineError(f"config.json has none of {', '.join(names)}; cannot plan memory")

        text = config.get("text_config")
        if isinstance(text, dict) and "hidden_size" not in config:
            return cls.from_config(text)
        hidden = int(pick("hidden_size", "n_embd", "d_model"))
        heads = int(pick("num_attention_heads", "n_head"))
        return cls(
            hidden=hidden,
            layers=int(pick("num_hidden_layers", "n_layer")),
            heads=heads,
            kv_heads=int(pick("num_key_value_heads", default=heads)),
            intermediate=int(pick("intermediate_size", "n_inner", "ffn_dim", default=4 * hidden)),
            vocabulary=int(pick("vocab_size")),
            tied_embeddings=bool(config.get("tie_word_embeddings", False)),
            head_dim=config.get("head_dim"),
            logit_softcap=bool(config.get("final_logit_softcapping")),
        )

    @classmethod
    def from_folder(cls, folder: str | Path) -> ModelShape:
        path = Path(folder).expanduser() / "config.json"
        try:
            return cls.from_config(json.loads(path.read_text()))
        except (OSError, ValueError) as error:
            raise EngineError(f"cannot read {path}: {error}") from None

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * (self.head_dim or self.hidden // self.heads)

    @property
    def attention_dim(self) -> int:
        return self.heads * (self.head_dim or self.hidden // self.heads)

    def linear_shapes(self) -> list[tuple[int, int]]:
        """(in, out) of one block's linear layers, Llama-style: q, k, v, o, gate, up, down."""
        h, i = self.hidden, self.intermediate
        return [
            (h, self.attention_dim),
            (h, self.kv_dim),
            (h, self.kv_dim),
            (self.attention_dim, h),
            (h, i),
            (h, i),
            (i, h),
        ]

    def linear_parameters(self) -> int:
        return self.layers * sum(a * b for a, b in self.linear_shapes())

    def other_parameters(self) -> int:
        """Embeddings, output head and norms: never quantized."""
        embeddings = self.vocabulary * self.hidden
        head = 0 if self.tied_embeddings else embeddings
        return embeddings + head + (2 * self.layers + 1) * self.hidden

    def parameters(self) -> int:
        return self.linear_parameters() + self.other_parameters()

    def lora_parameters(self, rank: int) -> int:
        return self.layers * sum(rank * (a + b) for a, b in self.linear_shapes())


@dataclass(frozen=True)
class Workload:
    """What one training step runs: batch, longest prompt and answer, how it is computed."""

    batch_size: int
    prompt_tokens: int
    answer_tokens: int
    lora_r: int = 16
    dtype_bytes: int = 2  # 2: bf16 on a GPU; 4: fp32 on a CPU
    quantize: str | None = None
    prefix_sharing: bool = True  # the prompt runs once for both answers
    generation_prompts: int = 0  # eval prompts answered greedily (0: no eval)
    max_new_tokens: int = 64
    shards: int = 1  # GPUs the base is split across (--shard-base); 1: each holds all of it


@dataclass
class MemoryPlan:
    """The choice and the estimate behind it; kept in report.json and shown before a job."""

    micro_batch_size: int
    gradient_checkpointing: bool
    quantize: str | None
    estimate_bytes: int
    available_bytes: int | None
    available_source: str  # "--max-memory", "GPU free memory", "available RAM", "unknown"
    fits: bool
    breakdown: dict[str, int] = field(default_factory=dict)
    unplanned: str | None = None  # why there is no estimate (config.json lacks the shape)

    @classmethod
    def without_estimate(
        cls,
        reason: str,
        workload: Workload,
        micro_batch_size: int | str,
        checkpointing: bool | None,
    ) -> MemoryPlan:
        """The caller's choices (else the whole batch, no checkpointing) when the model's shape
        cannot be read: the job runs as it would have before the plan existed."""
        micro = workload.batch_size if micro_batch_size == "auto" else int(micro_batch_size)
        return cls(
            micro_batch_size=min(micro, workload.batch_size),
            gradient_checkpointing=bool(checkpointing),
            quantize=workload.quantize,
            estimate_bytes=0,
            available_bytes=None,
            available_source="unknown",
            fits=True,
            unplanned=reason,
        )

    @property
    def estimate_gib(self) -> float:
        return self.estimate_bytes / GIB

    def summary(self) -> str:
        """One line: 'needs about 19.2 GiB of 79.1 GiB (GPU free memory): fits, ...'."""
        needs = f"needs about {self.estimate_gib:.1f} GiB"
        if self.unplanned:
            needs = f"no memory estimate ({self.unplanned})"
        elif self.available_bytes is not None:
            needs += f" of {self.available_bytes / GIB:.1f} GiB ({self.available_source})"
            needs += ": fits" if self.fits else ": does not fit"
        how = f"micro-batch {self.micro_batch_size}"
        how += ", gradient checkpointing" if self.gradient_checkpointing else ""
        how += ", 4-bit base" if self.quantize == "4bit" else ""
        return f"{needs} ({how})"

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["estimate_gib"] = round(self.estimate_gib, 2)
        values["available_gib"] = (
            None if self.available_bytes is None else round(self.available_bytes / GIB, 2)
        )
        values["summary"] = self.summary()
        return values


def _block_bytes_per_token(shape: ModelShape, dtype_bytes: int) -> float:
    """Bytes one block keeps for the backward pass per token, with LoRA on every linear layer.

    Both norms keep their input in float32; attention keeps q, k and v (k and v repeated to
    every head when a padding mask is given) and its output; the MLP keeps gate, its SiLU and
    up. Each LoRA layer keeps its input in the adapter's float32 for the A matrix's gradient:
    the layer's own input when the model computes in fp32 (q, k, v share one, gate and up
    another), a float32 copy per layer when it computes in bf16 (PEFT casts it).
    """
    h, i, a = shape.hidden, shape.intermediate, shape.attention_dim
    kept = 8 * h + dtype_bytes * (4 * a + 3 * i)
    lora_inputs = (2 * h + a + i) if dtype_bytes == 4 else (5 * h + a + i)
    return kept + 4 * lora_inputs


def weights_bytes(shape: ModelShape, workload: Workload) -> int:
    """The base's weights on one GPU: all of them, or with ``shards`` > 1 the GPU's share of the
    blocks and embeddings, the output head whole (tied: the embeddings whole, as one tensor)
    and two blocks gathered whole at a time."""
    if workload.quantize == "4bit":
        return int(
            shape.linear_parameters() * NF4_BYTES_PER_PARAMETER
            + shape.other_parameters() * workload.dtype_bytes
        )
    whole = shape.parameters() * workload.dtype_bytes
    if workload.shards <= 1:
        return whole
    head = shape.vocabulary * shape.hidden * workload.dtype_bytes
    sharded = whole - head
    return int(head + sharded / workload.shards + 2 * sharded / shape.layers)


def estimate(
    shape: ModelShape, workload: Workload, *, micro_batch_size: int, checkpointing: bool
) -> dict[str, int]:
    """The peak, in bytes, and what it is made of."""
    m, p, ans = micro_batch_size, workload.prompt_tokens, workload.answer_tokens
    b = workload.dtype_bytes
    per_token = _block_bytes_per_token(shape, b)
    if workload.prefix_sharing and checkpointing:
        # prompt | chosen | rejected packed in one row (logprobs.pair_logps_packed): no
        # cache, one boolean [row x row] mask shared by the blocks
        tokens = m * (p + 2 * ans)
        context_kv = m * (p + 2 * ans) ** 2
    elif workload.prefix_sharing:
        # the prompt once, both answers as continuations attending to its (repeated) cache
        tokens = m * p + 2 * m * ans
        context_kv = 2 * m * (p + ans) * (2 * shape.attention_dim + 2 * shape.kv_dim) * b
    else:
        tokens = 2 * m * (p + ans)
        context_kv = 0
    layers = shape.layers
    if checkpointing:
        activations = tokens * (layers * shape.hidden * b + per_token) + context_kv
    else:
        activations = tokens * layers * per_token + context_kv * layers
    # the backward pass holds a block's gradients on top: a few hidden-sized tensors a token
    transient = tokens * (4 * shape.hidden + 2 * shape.intermediate) * b
    chunk = min(2 * m * ans, max(1, LOGIT_CHUNK_BYTES // (4 * shape.vocabulary)))
    # a plain head (logprobs._HeadLogps): one float32 copy of a chunk's logits, and its
    # output in the model's dtype beside it; through autograd (a softcap), about five (measured)
    per_logit = (b + 20) if shape.logit_softcap else (4 + (b if b != 4 else 0))
    logits = chunk * shape.vocabulary * per_logit
    weights = weights_bytes(shape, workload)
    patch = shape.lora_parameters(workload.lora_r) * LORA_BYTES_PER_PARAMETER / workload.shards
    training = weights + patch + activations + transient + logits
    inference = weights + patch + inference_bytes(shape, workload, micro_batch_size)
    peak = max(training, inference)
    overhead = int(peak * OVERHEAD_FRACTION) + OVERHEAD_BYTES
    return {
        "weights": int(weights),
        "lora_and_optimizer": int(patch),
        "activations": int(activations + transient),
        "logits": int(logits),
        "inference_extra": int(max(0, inference - training)),
        "overhead": overhead,
        "total": int(peak) + overhead,
    }


def inference_bytes(shape: ModelShape, workload: Workload, micro_batch_size: int) -> int:
    """Beyond the weights, for the reference pass and greedy answers: one block's working
    tensors and the KV caches, never kept for a backward pass."""
    b, m = workload.dtype_bytes, micro_batch_size
    p, ans = workload.prompt_tokens, workload.answer_tokens
    kv_per_token = 2 * shape.kv_dim * shape.layers * b
    tokens = 2 * m * (p + ans)
    reference = tokens * kv_per_token + tokens * (3 * shape.intermediate + 6 * shape.hidden) * b
    generation = 0
    if workload.generation_prompts:
        rows = min(GENERATION_BATCH, workload.generation_prompts)
        context = p + workload.max_new_tokens
        generation = rows * context * kv_per_token + rows * p * 3 * shape.intermediate * b
        generation += rows * shape.vocabulary * 4 * 2
    return int(max(reference, generation))


def plan_memory(
    shape: ModelShape,
    workload: Workload,
    *,
    micro_batch_size: int | str = "auto",
    gradient_checkpointing: bool | None = None,
    available_bytes: int | None,
    available_source: str = "unknown",
) -> MemoryPlan:
    """Pick micro-batch and checkpointing (those not fixed by the caller) to fit the memory.

    Prefers no checkpointing (a third less compute) at the largest micro-batch that fits, then
    checkpointing at the largest that fits. With unknown memory, the caller's choices or the
    whole batch without checkpointing. EngineError when nothing fits.
    """
    batch = workload.batch_size
    if micro_batch_size == "auto":
        sizes = list(range(batch, 0, -1))
    else:
        sizes = [min(int(micro_batch_size), batch)]
    options = [False, True] if gradient_checkpointing is None else [gradient_checkpointing]
    tried = []
    for checkpointing in options:
        for size in sizes:
            breakdown = estimate(
                shape, workload, micro_batch_size=size, checkpointing=checkpointing
            )
            plan = MemoryPlan(
                micro_batch_size=size,
                gradient_checkpointing=checkpointing,
                quantize=workload.quantize,
                estimate_bytes=breakdown["total"],
                available_bytes=available_bytes,
                available_source=available_source,
                fits=available_bytes is None or breakdown["total"] <= available_bytes,
                breakdown=breakdown,
            )
            if plan.fits:
                return plan
            tried.append(plan)
    smallest = min(tried, key=lambda plan: plan.estimate_bytes)
    raise EngineError(refusal(shape, workload, smallest))


def refusal(shape: ModelShape, workload: Workload, smallest: MemoryPlan) -> str:
    """One line: what is needed, what is there, and what would fit."""
    available = smallest.available_bytes or 0
    options = []
    if workload.quantize is None:
        quantized = estimate(
            shape,
            Workload(**{**asdict(workload), "quantize": "4bit", "shards": 1}),  # not sharded
            micro_batch_size=1,
            checkpointing=True,
        )["total"]
        if quantized <= available:
            options.append(f"--quantize 4bit (about {quantized / GIB:.1f} GiB)")
    gpus = gpus_needed(shape, workload, available)
    if gpus is not None:  # sharding splits the bf16 base (FSDP does not shard a 4-bit one)
        options.append(
            f"{gpus} such GPUs with the base sharded (--shard-base under torchrun "
            f"--nproc-per-node {gpus}; a job's config: gpus {gpus}, shard_base true)"
        )
    else:
        options.append(f"more than {GPUS_PER_NODE} such GPUs")
    return (
        f"not enough memory: the job needs about {smallest.estimate_gib:.1f} GiB even at "
        f"micro-batch 1 with gradient checkpointing"
        f"{' and a 4-bit base' if workload.quantize else ''}, and "
        f"{available / GIB:.1f} GiB is there ({smallest.available_source}); "
        f"what would fit: {' or '.join(options)}"
    )


def gpus_needed(shape: ModelShape, workload: Workload, per_gpu_bytes: int) -> int | None:
    """The fewest GPUs of ``per_gpu_bytes`` (more than the job has now) that hold the job at
    micro-batch 1 with checkpointing when the bf16 base is sharded across them
    (``--shard-base``); None past one node."""
    for gpus in range(max(2, workload.shards + 1), GPUS_PER_NODE + 1):
        sharded = Workload(**{**asdict(workload), "quantize": None, "shards": gpus})
        needed = estimate(shape, sharded, micro_batch_size=1, checkpointing=True)["total"]
        if needed <= per_gpu_bytes:
            return gpus
    return None


def available_memory() -> tuple[int | None, str]:
    """Free memory of the GPU the engine would use, else the RAM available; (None, 'unknown')
    when neither can be read. Imports torch only if it is already imported (a web process
    plans without it)."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info()
        return int(free), "GPU free memory"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024, "available RAM"
    except OSError:
        pass
    if hasattr(os, "sysconf") and "SC_AVPHYS_PAGES" in os.sysconf_names:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "available RAM"
    return None, "unknown"


class TensorBytesTracker:
    """The CPU's stand-in for ``torch.cuda.max_memory_allocated``: while active, the peak of
    the bytes held by tensor storages created inside (each counted once, until freed).

    Tensors that existed before (the weights) are not counted; add them yourself.
    """

    def __init__(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        tracker = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
                out = func(*args, **(kwargs or {}))
                tracker._saw(out, (args, kwargs))
                return out

        self._mode = _Mode()
        self._live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def _saw(self, out: Any, inputs: Any) -> None:
        import weakref

        import torch
        from torch.utils._pytree import tree_flatten

        # a view or an in-place result shares an input's storage: nothing new was allocated
        # (counting it would count a weight the first time a layer transposes it)
        shared = {
            value.untyped_storage().data_ptr()
            for value in tree_flatten(inputs)[0]
            if isinstance(value, torch.Tensor)
        }
        for value in tree_flatten(out)[0]:
            if not isinstance(value, torch.Tensor):
                continue
            storage = value.untyped_storage()
            if storage.nbytes() and storage.data_ptr() in shared:
                continue
            key = id(storage)
            if key in self._live:
                continue
            self._live[key] = storage.nbytes()
            self.current += storage.nbytes()
            weakref.finalize(storage, self._free, key)
        self.peak = max(self.peak, self.current)

    def _free(self, key: int) -> None:
        self.current -= self._live.pop(key, 0)

    def __enter__(self) -> TensorBytesTracker:
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._mode.__exit__(*exc)
