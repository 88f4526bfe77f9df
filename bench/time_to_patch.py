"""Time to patch: from the launch request to a downloadable adapter, on the demo model.

    .venv/bin/python bench/time_to_patch.py [--pairs 20] [--warm-runs 3]

Uses this machine's PostgreSQL (a scratch database ``bench_pw_jobs``, dropped and created) and
Redis (``CELERY_BROKER_URL``, default DB 4), starts one real Celery worker, and launches jobs
through the JSON API with a Bearer token, polling ``GET /api/v1/jobs/{id}`` every 50 ms until
the job has succeeded and ``adapter.zip`` downloads. The before/after evaluation is included.

- cold: the first job of a worker that has just started (torch not yet imported by the job
  code, the model not loaded, the reference log-prob cache empty);
- warm: the next jobs on the same worker (model in memory, reference log-probs cached).

Targets (issue 5): under 20 s cold and under 10 s warm on a 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DB_NAME = "bench_pw_jobs"
SERVER = os.environ.get("BENCH_POSTGRES", "postgres://postgres@127.0.0.1:5432")


def scratch_database() -> str:
    import psycopg

    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DB_NAME}"')
    return f"{SERVER}/{DB_NAME}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--warm-runs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30, help="budget; early stop usually ends it")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="time-to-patch-"))
    env = {
        "DATABASE_URL": scratch_database(),
        "CELERY_BROKER_URL": os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/4"),
        "ARTIFACT_ROOT": str(work / "artifacts"),
        "PATCHWISE_CACHE_DIR": str(work / "refcache"),
        "SECURE_SSL_REDIRECT": "0",
        "DJANGO_SETTINGS_MODULE": "config.settings",
    }
    os.environ.update(env)

    import django

    django.setup()
    from django.core.management import call_command
    from django.test import Client

    from accounts.services import token_create, user_create
    from annotate.services import (
        case_create,
        comparison_create,
        project_create,
        response_create,
    )
    from config.celery import app
    from tests.conftest import cached_demo_model
    from tests.training.conftest import judge_all, scenario_rows

    call_command("migrate", verbosity=0)
    model_dir = cached_demo_model()
    curator, _ = user_create(username="bench-curator", role="curator")
    annotator, _ = user_create(username="bench-annotator", role="annotator")
    project = project_create(name="Bench", slug="bench")

    # N pairs: the demo's flagged and held-out cases (all patched here), each with the deployed
    # wrong answer and, for a second pair, a sampled wrong answer (another return window).
    rows = scenario_rows(model_dir)
    fixable = [row for row in rows if row.get("better_response")]
    regression = [row for row in rows if row.get("split") == "regression"]
    pairs = 0
    for row in fixable:
        if pairs >= args.pairs:
            break
        case = case_create(
            project=project,
            prompt=row["prompt"],
            response=row["response"],
            better_response=row["better_response"],
            topic=row.get("topic") or "",
        )
        pairs += 1
        other_wrong = row["response"].replace(" 7 days", " 14 days")
        if pairs < args.pairs and other_wrong != row["response"]:
            better = case.responses.get(origin="human")
            sampled = response_create(case=case, text=other_wrong, origin="generated")
            comparison_create(case=case, response_a=sampled, response_b=better)
            pairs += 1
    for row in regression:
        case_create(
            project=project,
            prompt=row["prompt"],
            response=row["response"],
            split="regression",
            topic=row.get("topic") or "",
        )
    judge_all(project, annotator)

    app.control.purge()
    log_path = work / "worker.log"
    started = time.perf_counter()
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", "gpu,default",
         "--pool", "solo", "--concurrency", "1", "--hostname", f"bench-{os.getpid()}@%h",
         "--without-gossip", "--without-mingle", "--loglevel", "INFO"],
        cwd=ROOT, env={**os.environ, **env}, stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        while b"ready." not in log_path.read_bytes():
            if worker.poll() is not None:
                print(log_path.read_text(), file=sys.stderr)
                return 1
            time.sleep(0.1)
        worker_ready_s = time.perf_counter() - started

        token = token_create(user=curator)
        client = Client(HTTP_HOST="127.0.0.1", HTTP_AUTHORIZATION=f"Bearer {token}")
        results = []
        for run in range(1 + args.warm_runs):
            results.append(
                time_one_job(
                    client,
                    "cold" if run == 0 else "warm",
                    {"epochs": args.epochs, "model": str(model_dir)},
                    worker.pid,
                )
            )
    finally:
        worker.terminate()
        worker.wait(timeout=30)

    print(f"\ntime to patch, demo model, {pairs} pairs, {len(regression)} regression "
          f"prompts, worker ready in {worker_ready_s:.1f} s (not counted)\n")  # fmt: skip
    header = ("run", "total s", "worker CPU s", "queued s", "load+save s", "ref s", "eval s",
              "train s", "steps", "flagged fixed", "regr. changed")  # fmt: skip
    print(" | ".join(header))
    print(" | ".join("---" for _ in header))
    for result in results:
        print(" | ".join(str(result[key]) for key in header))
    warm = [float(r["total s"]) for r in results if r["run"] == "warm"]
    if warm:
        print(f"\ncold {results[0]['total s']} s; warm median {statistics.median(warm):.2f} s")
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"load average at the end (1, 5, 15 min): {load} on {os.cpu_count()} CPUs")
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux): the machine is shared, so wall time
    alone overstates what an idle one would take."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def time_one_job(client, label: str, config: dict, worker_pid: int) -> dict:
    from training.models import TrainingJob

    cpu_before = cpu_seconds(worker_pid)
    started = time.perf_counter()
    response = client.post("/api/v1/projects/bench/jobs", {"config": config},
                           content_type="application/json")  # fmt: skip
    assert response.status_code == 202, response.content
    job_id = response.json()["id"]
    while True:
        state = client.get(f"/api/v1/jobs/{job_id}").json()
        if state["status"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.05)
    if state["status"] != "succeeded":
        raise SystemExit(f"job {job_id} {state['status']}: {state['error']}")
    download = client.get(f"/api/v1/jobs/{job_id}/adapter.zip")
    assert download.status_code == 200
    b"".join(download.streaming_content)
    total = time.perf_counter() - started
    worker_cpu = cpu_seconds(worker_pid) - cpu_before

    job = TrainingJob.objects.get(pk=job_id)
    timings = job.report.get("timings", {})
    engine_s = sum(timings.values())
    summary = job.report["summary"]
    running_s = (job.finished_at - job.started_at).total_seconds()
    return {
        "run": label,
        "total s": f"{total:.2f}",
        "worker CPU s": f"{worker_cpu:.2f}",
        "queued s": f"{(job.started_at - job.created_at).total_seconds():.2f}",
        # worker time outside the engine's phases: imports and model load (cold), adapter
        # save, zip and sha256
        "load+save s": f"{max(0.0, running_s - engine_s):.2f}",
        "ref s": f"{timings.get('reference_s', 0):.2f}",
        "eval s": f"{timings.get('eval_before_s', 0) + timings.get('eval_after_s', 0):.2f}",
        "train s": f"{timings.get('train_s', 0):.2f}",
        "steps": job.report["training"]["steps"],
        "flagged fixed": f"{summary['flagged']['fixed']}/{summary['flagged']['total']}",
        "regr. changed": f"{summary.get('regression', {}).get('changed', 0)}",
    }


if __name__ == "__main__":
    raise SystemExit(main())
