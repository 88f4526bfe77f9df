"""--shard-base: two processes on the CPU (torchrun, gloo) each hold half of the base's decoder
blocks (FSDP2) and still train the patch one process trains."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.engine.conftest import build_tiny_model
from tests.engine.test_distributed import (
    EVAL,
    PAIRS,
    assert_same_adapter,
    torchrun,
    write_jsonl,
)
from training.engine import EngineError, TrainConfig, train
from training.engine.evaluate import generate_greedy_ids
from training.engine.modeling import load_base

# three flagged prompts and seven items: the ranks' shares of the answers differ in length
EVAL_ODD = [*EVAL, {"prompt": "support answers every", "expected": " ticket", "kind": "flagged"}]


@pytest.mark.slow
def test_a_sharded_base_trains_the_adapter_one_process_trains(tiny_model_dir, tmp_path):
    # 7 pairs in steps of 3: a rank has no pair in each epoch's last step and runs a stand-in
    flags = {"epochs": 2, "batch_size": 3, "lr": 5e-3, "seed": 7, "sft_warmup_epochs": 1}
    one = train(
        TrainConfig(model=str(tiny_model_dir), ref_cache_dir=str(tmp_path / "cache-1"), **flags),
        pairs=PAIRS,
        eval_items=EVAL_ODD,
        out_dir=tmp_path / "one",
    )
    cli_flags = [part for key, value in flags.items()
                 for part in (f"--{key.replace('_', '-')}", str(value))]  # fmt: skip
    ran = torchrun(
        ["-m", "training.engine", "train", "--model", str(tiny_model_dir),
         "--pairs", str(write_jsonl(tmp_path / "pairs.jsonl", PAIRS)),
         "--eval", str(write_jsonl(tmp_path / "eval.jsonl", EVAL_ODD)),
         "--out", str(tmp_path / "two"), "--shard-base", *cli_flags],
        tmp_path,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr[-3000:]

    assert_same_adapter(tmp_path / "one", tmp_path / "two", lr=flags["lr"])
    report = json.loads((tmp_path / "two" / "report.json").read_text())
    training = report["training"]
    assert training["processes"] == 2
    # the point of sharding: rank 0 holds about half of the weights of the blocks
    sharded = training["sharded_base"]
    assert sharded["blocks"] == 2
    whole = one.report["training"].get("sharded_base")
    assert whole is None
    base = sharded["parameters"]
    blocks_share = base - sharded["parameters_on_rank_0"]  # what rank 0 does not hold
    assert 0.25 * base < blocks_share < 0.5 * base
    for mine, theirs in zip(one.report["pairs"], report["pairs"], strict=True):
        for key in ("ref_logp_chosen", "ref_logp_rejected", "policy_logp_chosen"):
            assert theirs[key] == pytest.approx(mine[key], abs=1e-3)
    assert [row["before"] for row in report["eval"]] == [
        row["before"] for row in one.report["eval"]
    ]
    assert [row["after"] for row in report["eval"]] == [row["after"] for row in one.report["eval"]]
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert metrics["loss"] == pytest.approx(one.metrics["loss"], abs=1e-4)
    assert metrics["eval/flagged_fixed"] == one.metrics["eval/flagged_fixed"]
    assert ran.stdout.count("wrote ") == 1


def test_shard_base_needs_several_processes(tiny_model_dir, tmp_path):
    config = TrainConfig(model=str(tiny_model_dir), shard_base=True)
    with pytest.raises(EngineError, match="torchrun --nproc-per-node"):
        train(config, pairs=PAIRS, out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_shard_base_refuses_a_4bit_base_saying_why(tiny_model_dir, tmp_path):
    config = TrainConfig(model=str(tiny_model_dir), shard_base=True, quantize="4bit")
    with pytest.raises(EngineError, match="4bit is not supported: FSDP shards floating-point"):
        train(config, pairs=PAIRS, out_dir=tmp_path / "out")


@pytest.mark.slow
def test_sharded_answers_that_end_at_different_steps_do_not_hang(tiny_model_dir, tmp_path):
    """Each greedy step gathers the blocks from every rank: a rank whose answer ended keeps
    stepping until the other's has (else the other would wait for it forever)."""
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    prompts = ["the refund window is", "hello what is"]
    base = load_base(model_dir)
    answers = generate_greedy_ids(base.model, base.tokenizer, prompts, 16)
    # a token the first answer says early and the second never: make it an end of answer
    stop = next(token for token in answers[0][1:6] if token not in answers[1])
    generation = json.loads((model_dir / "generation_config.json").read_text())
    generation["eos_token_id"] = [base.tokenizer.eos_token_id, stop]
    (model_dir / "generation_config.json").write_text(json.dumps(generation))
    flagged = [
        {"prompt": prompt, "expected": " thirty days", "kind": "flagged"} for prompt in prompts
    ]
    flags = ["--epochs", "1", "--batch-size", "2", "--seed", "3"]
    reports = []
    for name, processes in (("one", []), ("two", ["--shard-base"])):
        args = ["-m", "training.engine", "train", "--model", str(model_dir),
                "--pairs", str(write_jsonl(tmp_path / "pairs.jsonl", PAIRS[:2])),
                "--eval", str(write_jsonl(tmp_path / "eval.jsonl", flagged)),
                "--out", str(tmp_path / name), *flags, *processes]  # fmt: skip
        if processes:
            ran = torchrun(args, tmp_path, timeout=300, PATCHWISE_DIST_TIMEOUT_S="60")
        else:
            ran = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True,
                                 text=True, timeout=300, env={**os.environ,
                                 "PATCHWISE_CACHE_DIR": str(tmp_path / "cache-1")})  # fmt: skip
        assert ran.returncode == 0, ran.stderr[-3000:]
        reports.append(json.loads((tmp_path / name / "report.json").read_text()))
    one, two = ([row["before"] for row in report["eval"]] for report in reports)
    assert len(one[0]) < len(one[1])  # the first answer did end early
    assert two == one


@pytest.mark.slow
def test_sharded_tied_base_with_a_deployed_adapter_and_checkpointing(tmp_path):
    """Embeddings tied to the head (kept whole), a deployed adapter under the patch (and the
    combined adapter written from the gathered patch), gradient checkpointing and one pair per
    forward pass, 5 pairs a step (3 and 2 per rank): still the one-process adapter."""
    tied = build_tiny_model(tmp_path / "tied", tie_word_embeddings=True)
    deployed = tmp_path / "deployed"
    train(
        TrainConfig(
            model=str(tied),
            epochs=1,
            batch_size=4,
            lr=5e-3,
            lora_r=4,
            ref_cache_dir=str(tmp_path / "cache-0"),
        ),  # fmt: skip
        pairs=PAIRS[:4],
        out_dir=deployed,
    )
    flags = ["--adapter", str(deployed), "--epochs", "2", "--batch-size", "5",
             "--micro-batch-size", "1", "--gradient-checkpointing", "--lr", "5e-3"]  # fmt: skip
    for name, extra in (("one", []), ("two", ["--shard-base"])):
        args = ["-m", "training.engine", "train", "--model", str(tied),
                "--pairs", str(write_jsonl(tmp_path / "pairs.jsonl", PAIRS)),
                "--out", str(tmp_path / name), *flags, *extra]  # fmt: skip
        if extra:
            ran = torchrun(args, tmp_path, timeout=600)
        else:
            ran = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True,
                                 text=True, timeout=600, env={**os.environ,
                                 "PATCHWISE_CACHE_DIR": str(tmp_path / "cache-1")})  # fmt: skip
        assert ran.returncode == 0, ran.stderr[-3000:]
    assert_same_adapter(tmp_path / "one", tmp_path / "two", lr=5e-3)
    # the combined adapter's A matrices carry the patch's scale (alpha / r = 2)
    assert_same_adapter(tmp_path / "one" / "combined", tmp_path / "two" / "combined", lr=1e-2)
