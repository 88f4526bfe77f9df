"""A job on several GPUs: the engine under torchrun, as a subprocess of the gpu worker.

The worker stays what it is for one-GPU jobs (claim, heartbeat, progress, cancel, artifacts);
only the training moves to ``torchrun --nproc-per-node N -m training.engine train ...``, started
through ``training.engine.launch`` in its own process group. A fresh process gets a clean CUDA
context (a forked Celery child must not touch CUDA its parent set up), and the ranks share
nothing with the worker but files and rank 0's progress, one JSON object a line on stdout.

Cancel: the worker sends SIGTERM to the process group; torchrun stops its ranks. If it has not
ended within ``STOP_GRACE_S`` it is killed, and its ranks end with it (each rank asked Linux to
end it when torchrun ends). A worker that dies takes torchrun with it the same way, and the
reaper fails the job when its heartbeat goes stale, as for any job.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
STOP_GRACE_S = 60.0  # torchrun itself waits 30 s for its ranks before it kills them
_END = object()


def engine_flags(config: dict[str, Any]) -> list[str]:
    """The job's engine config as the engine CLI's flags: the config keys are those flags with
    underscores (DESIGN.md), so the mapping is mechanical."""
    flags: list[str] = []
    for key, value in config.items():
        if value is None:  # the engine's default
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is False:  # yes/no flags (--gradient-checkpointing) take --no-
            flags.append(f"--no-{key.replace('_', '-')}")
        elif isinstance(value, list | tuple):
            flags += [flag, ",".join(str(item) for item in value)]
        else:
            flags += [flag, str(value)]
    return flags


def torchrun_command(
    *, gpus: int, config: dict[str, Any], pairs: Path, eval_file: Path | None, out_dir: Path
) -> list[str]:
    command = [
        sys.executable, "-m", "training.engine.launch",
        "--standalone", "--nproc-per-node", str(gpus),
        "-m", "training.engine", "train", *engine_flags(config),
        "--pairs", str(pairs), "--out", str(out_dir), "--progress", "json",
    ]  # fmt: skip
    if eval_file is not None:
        command += ["--eval", str(eval_file)]
    return command


def train_under_torchrun(
    *,
    job_id: int,
    gpus: int,
    config: dict[str, Any],
    pairs: list[dict],
    eval_items: list[dict] | None,
    out_dir: Path,
    on_progress: Callable[[dict[str, Any]], None],
    should_cancel: Callable[[], bool],
) -> None:
    """Train one job (``config``: the engine's keys) on ``gpus`` processes into ``out_dir``.

    Raises Cancelled when ``should_cancel`` turned true (the processes are stopped first), and
    EngineError with the failing rank's own message when training failed.
    """
    from training.engine import Cancelled, EngineError

    inputs = out_dir.with_name(f"{out_dir.name}-inputs")
    inputs.mkdir(parents=True, exist_ok=True)
    try:
        pairs_file = _write_jsonl(inputs / "pairs.jsonl", pairs)
        eval_file = _write_jsonl(inputs / "eval.jsonl", eval_items) if eval_items else None
        command = torchrun_command(
            gpus=gpus, config=config, pairs=pairs_file, eval_file=eval_file, out_dir=out_dir
        )
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])
        )}  # fmt: skip
        logger.info("job %s: training on %d processes: %s", job_id, gpus, " ".join(command))
        process = subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,  # its own process group, signalled as one on cancel
        )
        errors, tail, cancelled = _follow(process, job_id, on_progress, should_cancel)
    finally:
        shutil.rmtree(inputs, ignore_errors=True)
    if cancelled:
        raise Cancelled(f"cancelled while training on {gpus} processes")
    if process.returncode == 0:
        return
    if errors:  # the first rank to fail names the cause; the others' errors follow from it
        raise EngineError(errors[0])
    last = next((line for line in reversed(tail) if line.strip()), "no output")
    raise EngineError(
        f"training on {gpus} processes stopped (torchrun exit code {process.returncode}); "
        f"its last line: {last.strip()[:300]}"
    )


def _follow(
    process: subprocess.Popen,
    job_id: int,
    on_progress: Callable[[dict[str, Any]], None],
    should_cancel: Callable[[], bool],
) -> tuple[list[str], deque[str], bool]:
    """Read the processes' output until they end: progress events to ``on_progress``, the rest
    to the log; stop them all when ``should_cancel`` says so."""
    lines: queue.Queue = queue.Queue()

    def read() -> None:
        for line in process.stdout:
            lines.put(line)
        lines.put(_END)

    reader = threading.Thread(target=read, name=f"torchrun-output-job-{job_id}", daemon=True)
    reader.start()
    errors: list[str] = []
    tail: deque[str] = deque(maxlen=50)
    cancelled = False
    while True:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            line = None
        if line is _END:
            break
        if line is not None:
            event = _progress_event(line)
            if event is not None:
                on_progress(event)
            else:
                tail.append(line)
                logger.info("job %s: %s", job_id, line.rstrip())
                if line.startswith("error: "):
                    errors.append(line.removeprefix("error: ").strip())
        if not cancelled and should_cancel():
            cancelled = True
            stop_process_group(process)
    process.wait()
    reader.join(timeout=5)
    return errors, tail, cancelled


def _progress_event(line: str) -> dict[str, Any] | None:
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) and "phase" in event else None


def stop_process_group(process: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM to the group (torchrun stops its ranks), SIGKILL if it is still there later."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        logger.warning("torchrun (pid %s) ignored SIGTERM for %.0f s; killing it", process.pid,
                       grace_s)  # fmt: skip
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            return


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path
