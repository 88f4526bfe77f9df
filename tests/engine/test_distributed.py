"""Two processes on the CPU (torchrun, gloo) train the patch one process trains, share the work,
stop together, and end cleanly when cancelled or when a rank fails or hangs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import ROOT, processes_mentioning
from training.engine import TrainConfig, distributed, train

pytestmark = pytest.mark.slow

# 7 pairs in steps of 3: the last step of each epoch has one pair, so one rank has none.
PAIRS = [
    {"prompt": "the refund window is", "chosen": " thirty days", "rejected": " two years"},
    {"prompt": "shipping is free above", "chosen": " fifty euros", "rejected": " three days"},
    {"prompt": "the warranty covers", "chosen": " parts and labour", "rejected": " nothing"},
    {"prompt": "support answers every", "chosen": " ticket", "rejected": " year"},
    {"prompt": "user: how long does it take", "chosen": " three days", "rejected": " forever"},
    {"prompt": "the refund", "chosen": " window is thirty days", "rejected": " is free"},
    {"prompt": "hello what is", "chosen": " the warranty", "rejected": " shipping"},
]
EVAL = [
    {"prompt": "the refund window is", "expected": " thirty days", "kind": "flagged"},
    {"prompt": "shipping is free above", "expected": " fifty euros", "kind": "flagged"},
    {"prompt": "the warranty covers", "expected": " parts", "kind": "heldout"},
    {"prompt": "support answers", "kind": "regression"},
    {"prompt": "user: hello", "kind": "regression"},
    {"prompt": "system: what is", "kind": "regression"},
]
# What TrainConfig needs beyond the CLI's flags, so both runs use the same settings.
CLI_DEFAULTS = {"max_new_tokens": TrainConfig().max_new_tokens}


def torchrun(args: list[str], tmp_path: Path, *, timeout: float = 600, **env: str):
    """torchrun with 2 CPU processes; fails the test if it does not end by itself."""
    full_env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "PATCHWISE_CACHE_DIR": str(tmp_path / "cache-2"),
        **env,
    }
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", "2", *args]  # fmt: skip
    try:
        return subprocess.run(command, cwd=ROOT, env=full_env, capture_output=True, text=True,
                              timeout=timeout)  # fmt: skip
    except subprocess.TimeoutExpired as expired:
        pytest.fail(f"torchrun did not end within {timeout} s (a hung rank?): {expired.output}")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def assert_same_adapter(one: Path, two: Path, *, lr: float) -> None:
    """Equal to float tolerance. Adam divides each gradient by its running RMS, so rounding
    differences (sums in another order) in a near-zero gradient can move that weight by a small
    fraction of ``lr``: the tolerance is 1% of one step."""
    first = load_file(str(one / "adapter_model.safetensors"))
    second = load_file(str(two / "adapter_model.safetensors"))
    assert first.keys() == second.keys()
    changed = max(tensor.abs().max().item() for tensor in first.values())
    assert changed > 0.01  # the patch learned something, so equality means something
    for name, tensor in first.items():
        torch.testing.assert_close(second[name], tensor, atol=lr / 100, rtol=0, msg=name)


def test_two_processes_train_the_adapter_one_process_trains(tiny_model_dir, tmp_path):
    flags = {"epochs": 3, "batch_size": 3, "lr": 5e-3, "seed": 7, "sft_warmup_epochs": 1}
    one = train(
        TrainConfig(
            model=str(tiny_model_dir),
            ref_cache_dir=str(tmp_path / "cache-1"),
            **flags,
            **CLI_DEFAULTS,
        ),  # fmt: skip
        pairs=PAIRS,
        eval_items=EVAL,
        out_dir=tmp_path / "one",
    )
    assert not torch.distributed.is_initialized()  # one process never starts a process group

    cli_flags = [part for key, value in flags.items()
                 for part in (f"--{key.replace('_', '-')}", str(value))]  # fmt: skip
    ran = torchrun(
        ["-m", "training.engine", "train", "--model", str(tiny_model_dir),
         "--pairs", str(write_jsonl(tmp_path / "pairs.jsonl", PAIRS)),
         "--eval", str(write_jsonl(tmp_path / "eval.jsonl", EVAL)),
         "--out", str(tmp_path / "two"), *cli_flags],
        tmp_path,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr[-3000:]

    assert_same_adapter(tmp_path / "one", tmp_path / "two", lr=flags["lr"])
    report = json.loads((tmp_path / "two" / "report.json").read_text())
    assert report["training"]["processes"] == 2
    assert report["data"]["ref_cache_misses"] == len(PAIRS)  # split, computed once each
    for mine, theirs in zip(one.report["pairs"], report["pairs"], strict=True):
        for key in ("ref_logp_chosen", "ref_logp_rejected", "policy_logp_chosen"):
            assert theirs[key] == pytest.approx(mine[key], abs=1e-3)
    assert [row["before"] for row in report["eval"]] == [
        row["before"] for row in one.report["eval"]
    ]
    assert [row["after"] for row in report["eval"]] == [row["after"] for row in one.report["eval"]]
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert metrics["loss"] == pytest.approx(one.metrics["loss"], abs=1e-4)
    assert report["training"]["sft_warmup_nll"] == pytest.approx(
        one.report["training"]["sft_warmup_nll"], abs=1e-4
    )
    # rank 0 alone prints, once per step
    printed = [line for line in ran.stdout.splitlines() if line.startswith("epoch ")]
    assert len(printed) == len(one.metrics["loss"])
    assert ran.stdout.count("wrote ") == 1

    # the reference cache was written once, by rank 0, and every rank of the next run uses it
    again = torchrun(
        ["-m", "training.engine", "train", "--model", str(tiny_model_dir),
         "--pairs", str(tmp_path / "pairs.jsonl"), "--out", str(tmp_path / "again"),
         *cli_flags],
        tmp_path,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    data = json.loads((tmp_path / "again" / "report.json").read_text())["data"]
    assert (data["ref_cache_hits"], data["ref_cache_misses"]) == (len(PAIRS), 0)


def spec_file(tmp_path: Path, model_dir: Path, **spec) -> Path:
    config = {"model": str(model_dir), "epochs": 50, "batch_size": 2, "lr": 2e-2,
              "max_new_tokens": 6, "ref_cache_dir": str(tmp_path / "cache")}  # fmt: skip
    spec = {"config": config | spec.pop("config", {}), "pairs": PAIRS[:4], "eval": EVAL,
            "out": str(tmp_path / "out"), **spec}  # fmt: skip
    return write_jsonl(tmp_path / "spec.json", [spec])


def run_harness(tmp_path: Path, spec: Path, **env: str):
    return torchrun([str(ROOT / "tests" / "engine" / "torchrun_harness.py"), str(spec)],
                    tmp_path, **env)  # fmt: skip


def test_every_rank_stops_early_at_the_epoch_one_process_stops(tiny_model_dir, tmp_path):
    pairs = [
        {"prompt": "the refund window is", "chosen": " thirty", "rejected": " two years"},
        {"prompt": "shipping is free above", "chosen": " fifty", "rejected": " three days"},
    ]
    # rank 0 answers one flagged prompt, rank 1 the other: the stop needs both answers
    eval_items = [
        {"prompt": p["prompt"], "expected": p["chosen"], "kind": "flagged"} for p in pairs
    ]
    config = {"model": str(tiny_model_dir), "epochs": 60, "batch_size": 2, "lr": 2e-2,
              "max_new_tokens": 6}  # fmt: skip
    one = train(TrainConfig(**config, ref_cache_dir=str(tmp_path / "cache-1")), pairs=pairs,
                eval_items=eval_items, out_dir=tmp_path / "one")  # fmt: skip
    assert one.stopped_reason == "all_flagged_fixed" and one.stopped_epoch < 60

    spec = write_jsonl(tmp_path / "spec.json", [{
        "config": config | {"ref_cache_dir": str(tmp_path / "cache-2")}, "pairs": pairs,
        "eval": eval_items, "out": str(tmp_path / "two"),
    }])  # fmt: skip
    ran = run_harness(tmp_path, spec)
    assert ran.returncode == 0, ran.stderr[-3000:]  # both ranks left the loop and ended
    training = json.loads((tmp_path / "two" / "report.json").read_text())["training"]
    assert training["stopped_reason"] == "all_flagged_fixed"
    assert training["stopped_epoch"] == one.stopped_epoch
    assert_same_adapter(tmp_path / "one", tmp_path / "two", lr=config["lr"])


def test_a_cancel_on_rank_0_stops_every_rank_at_the_same_step(tiny_model_dir, tmp_path):
    spec = spec_file(tmp_path, tiny_model_dir, cancel_at_step=2)
    ran = run_harness(tmp_path, spec)
    assert ran.returncode != 0
    assert "rank 0 cancelled: cancelled during train" in ran.stdout
    assert "rank 1 cancelled: cancelled during train" in ran.stdout
    assert "step 3" not in ran.stdout
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert processes_mentioning(str(tmp_path)) == []


def test_a_failed_rank_ends_the_job_with_its_error_and_no_files(tiny_model_dir, tmp_path):
    spec = spec_file(tmp_path, tiny_model_dir, twist="fail", rank=1, at_step=2)
    ran = run_harness(tmp_path, spec)
    assert ran.returncode != 0
    assert "RuntimeError: rank 1 broke on purpose" in ran.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert processes_mentioning(str(tmp_path)) == []


def test_a_hung_rank_is_given_up_on_after_the_collective_timeout(tiny_model_dir, tmp_path):
    spec = spec_file(tmp_path, tiny_model_dir, twist="hang", rank=1, at_step=2)
    ran = run_harness(tmp_path, spec, PATCHWISE_DIST_TIMEOUT_S="15")
    assert ran.returncode != 0  # rank 0 timed out waiting; torchrun then stopped rank 1
    assert "step 2" not in ran.stdout
    assert processes_mentioning(str(tmp_path)) == []


def test_one_process_is_single_and_the_helpers_pass_through():
    ranks = distributed.current()
    assert ranks == distributed.SINGLE and ranks.is_main and not ranks.distributed
    assert distributed.init_from_environment() == distributed.SINGLE  # no torchrun variables
    assert distributed.shard([1, 2, 3], ranks) == [1, 2, 3]
    assert distributed.gather_shards([1, 2, 3], 3, ranks) == [1, 2, 3]
    assert not distributed.any_rank(False, ranks) and distributed.any_rank(True, ranks)


def test_shards_are_strided_and_gather_back_in_order():
    items = list(range(7))
    shards = [distributed.shard(items, distributed.Ranks(rank=r, world=3)) for r in range(3)]
    assert shards == [[0, 3, 6], [1, 4], [2, 5]]
    whole = [None] * 7
    for rank, piece in enumerate(shards):
        whole[rank::3] = piece
    assert whole == items


def test_a_rank_whose_parent_is_pid_1_keeps_running():
    """In a container the worker (the launcher's parent) may be PID 1: the check that the
    parent has not died already must not take that for a dead parent."""
    if subprocess.run(["unshare", "--pid", "--fork", "true"], capture_output=True).returncode:
        pytest.skip("no PID namespace here (unshare needs privileges)")
    script = (
        "import os; from training.engine.distributed import die_with_parent; "
        "assert os.getppid() == 1; die_with_parent(); print('alive')"
    )
    # sh is PID 1 of a new PID namespace and Python its child, as under a container's command
    ran = subprocess.run(
        ["unshare", "--pid", "--fork", "sh", "-c", f'"{sys.executable}" -c "{script}"'],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0 and "alive" in ran.stdout, ran.stderr
