"""The Makefile, read through `make -n` (what it would run, in order, without running it)."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

CPU_INDEX = "https://download.pytorch.org/whl/cpu"

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def _dry_run(target: str, *variables: str, path: str | None = None) -> list[str]:
    # Under `make test TORCH=...` (as CI runs it) the outer make passes its command-line
    # variables down through MAKEFLAGS; the dry run must see only what a user would type.
    inherited = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "TORCH")
    env = {key: value for key, value in os.environ.items() if key not in inherited}
    env["PATH"] = path or os.environ["PATH"]
    result = subprocess.run(
        ["make", "-n", target, "VENV=/nonexistent-venv", *variables],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def _torch_steps(lines: list[str]) -> tuple[str, str]:
    """The announcement and the pip command that installs torch; the first comes first."""
    announce = next(i for i, line in enumerate(lines) if line.startswith('echo "torch: TORCH='))
    install = next(
        i for i, line in enumerate(lines) if "pip install -q" in line and "torch" in line
    )
    assert announce < install, "the build must be named before the download starts"
    return lines[announce], lines[install]


@pytest.mark.parametrize("target", ["up", "test"])
def test_one_torch_variable_serves_both_commands(target):
    said, pip = _torch_steps(_dry_run(target, "TORCH=cpu"))
    assert "CPU-only" in said and "about 200 MB" in said
    assert pip.endswith(f"pip install -q torch --index-url {CPU_INDEX}")

    said, pip = _torch_steps(_dry_run(target, "TORCH=cuda"))
    assert "CUDA" in said and "about 5.8 GB" in said
    assert pip.endswith("pip install -q torch")

    said, pip = _torch_steps(_dry_run(target, "TORCH=torch==2.13.0"))  # as .ci/run calls it
    assert "torch==2.13.0" in said and pip.endswith("pip install -q 'torch==2.13.0'")


def _path_with_nvidia_smi(folder: Path, exit_code: int) -> str:
    folder.mkdir()
    stub = folder / "nvidia-smi"  # nvidia-smi -L exits non-zero where no GPU or driver is found
    stub.write_text(f"#!/bin/sh\nexit {exit_code}\n")
    stub.chmod(0o755)
    return f"{folder}:{os.environ['PATH']}"


def test_by_default_a_machine_without_a_gpu_gets_the_cpu_build(tmp_path):
    without = _path_with_nvidia_smi(tmp_path / "no-gpu", 1)
    said, pip = _torch_steps(_dry_run("up", path=without))
    assert "no GPU" in said and "about 200 MB" in said and CPU_INDEX in pip
    with_gpu = _path_with_nvidia_smi(tmp_path / "gpu", 0)
    said, pip = _torch_steps(_dry_run("up", path=with_gpu))
    assert "sees a GPU" in said and "about 5.8 GB" in said and CPU_INDEX not in pip


def test_the_readme_documents_the_variable_for_both_commands():
    readme = (ROOT / "README.md").read_text()
    two_commands = readme.split("## Two commands")[1].split("\n## ")[0]
    for text in ("`cpu`", "`cuda`", "make up TORCH=", "make test TORCH=", "200 MB", "5.8 GB"):
        assert text in two_commands, f"README's Two commands lacks {text}"
