"""Load a Hugging Face causal-LM folder once, on the best device, with a stable identity.

A worker keeps the last ``LoadedBase`` in memory between jobs, so loading is separate from
training: ``train(..., base=loaded)`` reuses it and leaves it as it found it.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from training.engine.errors import EngineError, first_line
from training.engine.folders import check_model_folder

# Files whose bytes define what the model computes; hashed (sampled) into the identity.
_IDENTITY_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
_SAMPLE_BYTES = 1 << 16
_SAMPLES = 33  # the first and last bytes, and 31 places between


@dataclass
class LoadedBase:
    """A base model and its tokenizer, ready to receive LoRA adapters."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    identity: str  # content hash of the folder: same weights -> same identity on any machine
    path: Path
    quantize: str | None = None  # "4bit": linear layers held as NF4 (QLoRA); None: full precision

    @property
    def precision(self) -> str:
        """In words, how the weights are held: 'bfloat16', 'float32', '4bit NF4 (compute ...)'."""
        dtype = str(self.model.get_input_embeddings().weight.dtype).removeprefix("torch.")
        return f"4bit NF4 (compute {dtype})" if self.quantize == "4bit" else dtype


def context_length(model: torch.nn.Module) -> int | None:
    """The most tokens the model takes at once (its position table), when its config says."""
    config = getattr(model, "config", None)
    return config_context_length(config.to_dict() if config is not None else {})


def config_context_length(values: dict[str, Any]) -> int | None:
    """The same, from config.json's values (before the model loads)."""
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = values.get(name)
        if isinstance(value, int) and value > 1:
            return value
    return None


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """The folder's tokenizer alone (seconds), to size the job before the model loads."""
    folder = check_model_folder(path)
    try:
        return AutoTokenizer.from_pretrained(folder)
    except Exception as error:  # noqa: BLE001 (missing or broken tokenizer files)
        raise EngineError(f"cannot load the tokenizer in {folder}: {first_line(error)}") from None


def pick_device() -> tuple[torch.device, torch.dtype]:
    """bf16 on a GPU that supports it, fp32 everywhere else (fp16 training needs loss scaling)."""
    if torch.cuda.is_available():
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        return torch.device("cuda", torch.cuda.current_device()), dtype
    return torch.device("cpu"), torch.float32


def weight_bytes(model: torch.nn.Module) -> int:
    """What the model's parameters hold, as stored (a 4-bit layer at its packed size)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


M_MMAP_THRESHOLD = -3  # mallopt's parameter number in glibc's malloc.h
# host blocks at least this big are mapped for themselves and unmapped when freed
HOST_MMAP_THRESHOLD = 8 * 2**20
# bases at least this big on a CPU get that threshold; smaller ones keep glibc's default
HOST_MMAP_MIN_WEIGHTS = 2**30


def return_large_frees_to_the_os(model: torch.nn.Module | None = None) -> bool:
    """Make freed host tensors of 8 MiB or more go back to the OS at once, for a CPU ``model``
    whose weights hold 1 GiB or more (every model when None). Returns whether it was set (glibc
    only; elsewhere the allocator is left as it is).

    glibc keeps freed blocks below a threshold on its heap for reuse, and raises that threshold
    up to 32 MiB as big blocks are freed; a big model's activations on a CPU (tens of MiB each,
    of many sizes) then fragment the heap, and the process's RSS grows from step to step over
    the tensors it holds: two pairs at Llama-3.2-1B's width with 4 blocks, after four steps,
    peaked at 3.0 GiB beyond the weights against 2.3 GiB with this. Each mapped block costs
    fresh zeroed pages, though: 8 % more time on bench/dpo_bench.py's long job (hidden 512, 131
    MiB of weights), where the heap's growth is a few hundred MiB; so small models keep the
    default. Applies to the whole process, which only a CPU job needs.
    """
    if model is not None:
        on_cpu = all(p.device.type == "cpu" for p in model.parameters())
        if not on_cpu or weight_bytes(model) < HOST_MMAP_MIN_WEIGHTS:
            return False
    libc = _libc()
    return libc is not None and bool(libc.mallopt(M_MMAP_THRESHOLD, HOST_MMAP_THRESHOLD))


@functools.cache
def _libc() -> Any:
    """glibc, or None where there is none (its tuning is then skipped)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt, libc.madvise  # noqa: B018 (both must exist)
    except (OSError, AttributeError):
        return None
    return libc


MADV_PAGEOUT = 21  # Linux's madvise: reclaim these pages now (contents kept, re-read on use)
PAGE_OUT_EVERY_S = 0.2


@contextmanager
def read_pages_given_back(folder: Path) -> Iterator[None]:
    """While a base is quantized as it loads on the CPU, give the pages of its checkpoint that
    have been read back to the OS every 0.2 s, and all of them at the end.

    transformers maps the *.safetensors files and quantizes each linear layer from the map; the
    embeddings and norms, kept as they are, stay views of it, so the map lives as long as the
    model and every page read while quantizing (3.6 GiB of float32 layers at Llama-3.2-1B's
    size) stayed in the process: the 4-bit job held more memory than the full-precision one.
    The pages are clean copies of the file: the kernel drops them and reads them again if a
    view still in use touches them. Linux 5.4 or later; elsewhere this does nothing.
    """
    files = {str(file.resolve()) for file in folder.glob("*.safetensors")}
    libc = _libc()
    if not files or libc is None or not sys.platform.startswith("linux"):
        yield
        return
    stop = threading.Event()

    def give_back() -> None:
        for start, end in _mapped_ranges(files):
            libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), MADV_PAGEOUT)

    def repeat() -> None:
        while not stop.wait(PAGE_OUT_EVERY_S):
            give_back()

    thread = threading.Thread(target=repeat, name="page-out", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        give_back()


def _mapped_ranges(files: set[str]) -> list[tuple[int, int]]:
    """The address ranges where this process maps any of ``files`` (from /proc/self/maps)."""
    ranges = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].rstrip("\n") in files:
                start, end = fields[0].split("-")
                ranges.append((int(start, 16), int(end, 16)))
    return ranges


def model_identity(path: Path) -> str:
    """A stable hash of a model folder's config, tokenizer and (sampled) weight bytes.

    Hashing whole multi-GB weight files would cost seconds per job; the size plus 64 KiB at 33
    evenly spread places in each file change whenever the weights do in practice (a LoRA merged
    into the base rewrites every linear layer, and those fill most of the file; the first,
    middle and last MiB alone missed that).
    """
    digest = hashlib.sha256()
    for name in _IDENTITY_FILES:
        file = path / name
        if file.is_file():
            digest.update(name.encode())
            digest.update(file.read_bytes())
    for file in sorted(p for p in path.iterdir() if p.name.endswith(_WEIGHT_SUFFIXES)):
        digest.update(_sampled_file_digest(file).encode())
    return digest.hexdigest()[:16]


def _sampled_file_digest(file: Path) -> str:
    size = file.stat().st_size
    digest = hashlib.sha256(f"{file.name}:{size}".encode())
    last = max(0, size - _SAMPLE_BYTES)
    with file.open("rb") as handle:
        for index in range(_SAMPLES):
            handle.seek(last * index // (_SAMPLES - 1))
            digest.update(handle.read(_SAMPLE_BYTES))
    return digest.hexdigest()


def load_base(
    path: str | Path,
    *,
    quantize: str | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> LoadedBase:
    """Load model + tokenizer from ``path``; EngineError (one line) if the folder is unusable.
    ``tokenizer``: the folder's, already loaded by ``load_tokenizer`` (not read a second time).

    ``quantize="4bit"`` holds the decoder's linear layers as NF4 with double quantization
    (QLoRA's recipe, bitsandbytes) and computes in the device's dtype; embeddings, norms and
    the output head stay in that dtype. The patch trained on it is served on the full base.
    """
    folder = check_model_folder(path)

    device, dtype = pick_device()
    options: dict[str, Any] = {}
    if quantize is not None:
        options["quantization_config"] = nf4_config(quantize, dtype)
    try:
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(folder)
        quantized_here = quantize is not None and device.type == "cpu"
        with read_pages_given_back(folder) if quantized_here else nullcontext():
            model = AutoModelForCausalLM.from_pretrained(
                folder,
                dtype=dtype,
                device_map={"": device.index} if device.type == "cuda" else None,
                **options,
            )
    except Exception as error:  # noqa: BLE001 (truncated weights, shapes unlike config.json...)
        raise EngineError(f"cannot load the model in {folder}: {first_line(error)}") from None
    if tokenizer.eos_token_id is None:
        raise EngineError(f"the tokenizer in {folder} has no eos token; answers need one to end")
    vocabulary = model.get_input_embeddings().num_embeddings
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id >= vocabulary:
        # Batches are padded; padded positions are masked out, so any id the model has works
        # (a [PAD] added to the tokenizer without resizing the model does not). eos is customary.
        tokenizer.pad_token = tokenizer.eos_token
    eval_mode(model)
    model.requires_grad_(False)
    return LoadedBase(
        model=model,
        tokenizer=tokenizer,
        device=device,
        identity=model_identity(folder),
        path=folder,
        quantize=quantize,
    )


def eval_mode(model: torch.nn.Module) -> None:
    """``model.eval()``, except for 4-bit linear layers, which stay in train mode (they have no
    dropout, so nothing else changes): in eval mode on a CPU with AVX512-BF16, bitsandbytes
    repacks them for a kernel without a backward pass, and gradients would silently stop
    there."""
    model.eval()
    if "bitsandbytes" not in sys.modules:
        return
    from bitsandbytes.nn import Linear4bit

    for module in model.modules():
        if isinstance(module, Linear4bit):
            module.train()


def nf4_config(quantize: str, dtype: torch.dtype) -> Any:
    """bitsandbytes' 4-bit NF4 settings, or EngineError naming what to install."""
    if quantize != "4bit":
        raise EngineError(f"quantize must be '4bit' or nothing (got {quantize!r})")
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError:
        raise EngineError("--quantize 4bit needs bitsandbytes: pip install -e '.[qlora]'") from None
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
    )


def decoder_blocks(model: torch.nn.Module) -> torch.nn.ModuleList | None:
    """The repeated decoder blocks: the module list as long as the config's layer count."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(causal_lm, "config", None)
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    for module in causal_lm.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == layers:
            return module
    return None


@contextmanager
def gradient_checkpointing(model: torch.nn.Module, enabled: bool = True) -> Iterator[bool]:
    """While inside, each decoder block keeps only its input for the backward pass and runs
    again there to rebuild the rest: activations shrink to one block's worth plus one hidden
    state per block, for about a third more compute. Yields whether it is on.

    Our own switch rather than transformers': theirs acts only in train mode, which would also
    turn dropout on and make the policy differ from the reference. A block called with a KV
    cache runs plainly: running it again in the backward pass would append to the cache twice.
    """
    blocks = decoder_blocks(model) if enabled else None
    if blocks is None:
        yield False
        return
    for block in blocks:
        block.forward = functools.partial(_checkpointed, block.forward)
    try:
        yield True
    finally:
        for block in blocks:
            del block.forward  # the class's own forward again


def _checkpointed(forward: Any, *args: Any, **kwargs: Any) -> Any:
    from torch.utils.checkpoint import checkpoint
    from transformers.cache_utils import Cache

    with_cache = any(isinstance(value, Cache) for value in (*args, *kwargs.values()))
    if with_cache or not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)
