"""Every benchmark script still runs: it imports, answers --help, and every name it imports from
the project exists (most of them are imported inside functions, so --help alone would not see a
removed one until someone ran the whole benchmark)."""

import ast
import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

# bench/_*.py are helpers the scripts share, not scripts.
BENCH_SCRIPTS = sorted(p for p in (ROOT / "bench").glob("*.py") if not p.name.startswith("_"))
PROJECT_PACKAGES = {"accounts", "annotate", "bench", "config", "rounds", "tests", "training"}


def test_there_are_bench_scripts_to_check():
    assert len(BENCH_SCRIPTS) >= 4


@pytest.mark.parametrize("script", BENCH_SCRIPTS, ids=lambda path: path.name)
def test_bench_script_imports_and_answers_help(script: Path):
    spec = importlib.util.spec_from_file_location(f"bench_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # module level only: every script runs under __main__
    assert callable(module.main)

    result = subprocess.run(
        [sys.executable, str(script), "--help"],
        cwd=script.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage:"), result.stdout


@pytest.mark.parametrize("script", BENCH_SCRIPTS, ids=lambda path: path.name)
def test_every_project_name_a_bench_script_imports_exists(script: Path):
    missing = []
    for node in ast.walk(ast.parse(script.read_text(), filename=str(script))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] not in PROJECT_PACKAGES:
                continue
            module = importlib.import_module(node.module)
            for alias in node.names:
                is_package = hasattr(module, "__path__")
                submodule = f"{node.module}.{alias.name}"
                if hasattr(module, alias.name) or (
                    is_package and importlib.util.find_spec(submodule) is not None
                ):
                    continue
                missing.append(f"line {node.lineno}: {node.module}.{alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PROJECT_PACKAGES:
                    importlib.import_module(alias.name)
    assert not missing, f"{script.name} imports names that do not exist: {missing}"
