"""`python -m training.engine train` as a user runs it: bad input is one line and exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GOOD_PAIR = {"prompt": "the refund window is", "chosen": " thirty days", "rejected": " two years"}


def run_cli(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATCHWISE_CACHE_DIR": str(tmp_path / "cache")}
    return subprocess.run(
        [sys.executable, "-m", "training.engine", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def run_train(tmp_path: Path, model: Path, pairs: Path, *flags: str):
    out = str(tmp_path / "o")
    args = ("train", "--model", str(model), "--pairs", str(pairs), "--out", out, *flags)
    return run_cli(*args, tmp_path=tmp_path)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_missing_model_folder(tmp_path: Path) -> None:
    pairs = write(tmp_path / "pairs.jsonl", json.dumps(GOOD_PAIR) + "\n")
    missing = tmp_path / "no-such-model"
    result = run_train(tmp_path, missing, pairs)
    assert_one_line_error(result, str(missing), "does not exist")


def test_malformed_jsonl_line(tmp_path: Path, tiny_model_dir: Path) -> None:
    pairs = write(tmp_path / "pairs.jsonl", json.dumps(GOOD_PAIR) + "\n{not json\n")
    result = run_train(tmp_path, tiny_model_dir, pairs)
    assert_one_line_error(result, str(pairs), "line 2", "not valid JSON")


def test_pair_missing_a_field(tmp_path: Path, tiny_model_dir: Path) -> None:
    bad = {"prompt": "a", "chosen": "b"}
    pairs = write(tmp_path / "pairs.jsonl", json.dumps(GOOD_PAIR) + "\n" + json.dumps(bad) + "\n")
    result = run_train(tmp_path, tiny_model_dir, pairs)
    assert_one_line_error(result, "line 2", "missing field 'rejected'")


def test_empty_pairs_file(tmp_path: Path, tiny_model_dir: Path) -> None:
    pairs = write(tmp_path / "pairs.jsonl", "\n")
    result = run_train(tmp_path, tiny_model_dir, pairs)
    assert_one_line_error(result, str(pairs), "is empty")


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--lora-r", "1024"], "LoRA rank 1024 cannot be served by vLLM"),
        (["--loss", "robust", "--label-smoothing", "0.5"], "'label_smoothing' must lie in"),
        (["--epochs", "0"], "'epochs' must be at least 1"),
        (["--target-modules", "c_attn"], "none of target_modules ['c_attn'] is a linear layer"),
        (["--loss", "ipo", "--label-smoothing", "0.1"], "applies to the sigmoid and robust"),
    ],
)
def test_config_that_cannot_train_or_be_served(
    tmp_path: Path, tiny_model_dir: Path, flags: list[str], fragment: str
) -> None:
    pairs = write(tmp_path / "pairs.jsonl", json.dumps(GOOD_PAIR) + "\n")
    result = run_train(tmp_path, tiny_model_dir, pairs, *flags)
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "o").exists()


def test_train_writes_the_patch_and_says_what_it_did(tmp_path: Path, tiny_model_dir: Path) -> None:
    pairs = write(tmp_path / "pairs.jsonl", json.dumps(GOOD_PAIR) + "\n")
    evals = write(
        tmp_path / "eval.jsonl",
        json.dumps({"prompt": "support answers", "kind": "regression", "topic": "support"}) + "\n",
    )
    out = tmp_path / "o"
    result = run_cli(
        "train", "--model", str(tiny_model_dir), "--pairs", str(pairs), "--eval", str(evals),
        "--out", str(out), "--epochs", "2", "--lora-r", "8", "--seed", "3",
        tmp_path=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "regression: " in result.stdout and "wrote " in result.stdout
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 8
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["seed"] == 3 and report["training"]["steps"] == 2


def test_a_patch_on_a_deployed_adapter_is_also_written_combined_with_it(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    pairs = write(tmp_path / "pairs.jsonl", json.dumps(GOOD_PAIR) + "\n")
    deployed = tmp_path / "deployed"
    first = run_cli(
        "train", "--model", str(tiny_model_dir), "--pairs", str(pairs), "--out", str(deployed),
        "--epochs", "1", "--lora-r", "4", "--target-modules", "q_proj,v_proj",
        tmp_path=tmp_path,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    targets = json.loads((deployed / "adapter_config.json").read_text())["target_modules"]
    assert sorted(targets) == ["q_proj", "v_proj"]
    out = tmp_path / "patch"
    result = run_cli(
        "train", "--model", str(tiny_model_dir), "--pairs", str(pairs), "--out", str(out),
        "--adapter", str(deployed), "--epochs", "1", "--lora-r", "8",
        tmp_path=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"combined with {deployed} as one LoRA of rank 12: {out / 'combined'}" in result.stdout
    assert json.loads((out / "combined" / "adapter_config.json").read_text())["r"] == 12


@pytest.mark.parametrize(("command", "flag"), [("generate", "--prompts"), ("demo", "--out")])
def test_every_subcommand_is_there(tmp_path: Path, command: str, flag: str) -> None:
    result = run_cli(command, "--help", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert flag in result.stdout
