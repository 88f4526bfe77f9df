"""The annotation queue under load: many comparisons in PostgreSQL, the app under gunicorn,
concurrent API clients leasing and judging.

    .venv/bin/python bench/queue_bench.py                  # 100,000 comparisons, 16 clients, 30 s
    .venv/bin/python bench/queue_bench.py --overlap 2 --seconds 60

It drops and recreates the database named by --database-url (default: patchwise_bench on the
local PostgreSQL), migrates it, fills it, starts gunicorn on 127.0.0.1 with --workers sync
workers (--threads > 1: gthread), and runs --clients processes, each an annotator with its own
token, looping GET /comparisons/next -> POST /comparisons/{id}/judgment for --seconds over plain
sockets (a connection per request: sync workers close it after each answer). It prints p50/p99
of both calls, judgments per second, the CPU spent per judgment by gunicorn, PostgreSQL and the
clients, and checks against the database that every 201 is one row, none lost and none
doubled, and that no comparison has more judgments than the overlap. The fixture rows are
written with bulk_create (through the services, 100,000 cases take a quarter of an hour); every
request of the run goes through the real API and services.
"""

import argparse
import http.client
import json
import multiprocessing
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--database-url", default="postgres://postgres@127.0.0.1:5432/patchwise_bench"
    )
    parser.add_argument("--comparisons", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--workers", type=int, default=4, help="gunicorn worker processes")
    parser.add_argument(
        "--threads", type=int, default=1, help="threads per worker (more than 1: gthread workers)"
    )
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--overlap", type=int, default=1)
    parser.add_argument("--port", type=int, default=8765)
    return parser.parse_args()


def recreate_database(url: str) -> None:
    import psycopg

    parsed = urlparse(url)
    name = parsed.path.lstrip("/")
    admin = parsed._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def fill(*, comparisons: int, clients: int, overlap: int) -> tuple[object, list[str]]:
    """The project, `comparisons` cases with two responses and one comparison each, tokens."""
    from django.core.management import call_command
    from django.db import connection

    from accounts.services import token_create, user_create
    from annotate.models import Case, Comparison, Origin, Response
    from annotate.services import project_create

    call_command("migrate", verbosity=0)
    project = project_create(name="Bench", slug="bench", overlap=overlap)
    batch = 5_000
    for start in range(0, comparisons, batch):
        size = min(batch, comparisons - start)
        cases = Case.objects.bulk_create(
            Case(project=project, prompt=f"Question {start + i}?", source="bench", flagged=True)
            for i in range(size)
        )
        responses = Response.objects.bulk_create(
            Response(case=case, text=f"Answer {side} to {case.prompt}", origin=Origin.GENERATED)
            for case in cases
            for side in ("A", "B")
        )
        Comparison.objects.bulk_create(
            Comparison(
                project=project,
                case=case,
                response_a=responses[2 * i],
                response_b=responses[2 * i + 1],
            )
            for i, case in enumerate(cases)
        )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    tokens = []
    for index in range(clients):
        user, _ = user_create(username=f"bench{index}", role="annotator", password="bench-pw-9x!")
        tokens.append(token_create(user=user, name="bench"))
    return project, tokens


def start_gunicorn(*, url: str, port: int, workers: int, threads: int) -> subprocess.Popen:
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "DEBUG": "0",
        "SECRET_KEY": "bench-only-secret-key-not-for-production-0123456789abcdef",
        "SECURE_SSL_REDIRECT": "0",
        "SECURE_COOKIES": "0",
        "ALLOWED_HOSTS": "127.0.0.1",
        "CONN_MAX_AGE": "600",
        "LOG_LEVEL": "WARNING",
    }
    gunicorn = shutil.which("gunicorn", path=str(Path(sys.executable).parent)) or "gunicorn"
    process = subprocess.Popen(
        [gunicorn, "config.wsgi", "--workers", str(workers), "--threads", str(threads),
         "--bind", f"127.0.0.1:{port}",
         "--log-level", "warning"],
        cwd=ROOT, env=env,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/api/v1/openapi.json")
            if conn.getresponse().status == 200:
                return process
        except OSError:
            time.sleep(0.3)
    process.terminate()
    raise RuntimeError("gunicorn did not answer within 60 s")


class Client:
    """One annotator's script: its own process and token.

    A plain socket per request, not http.client: gunicorn's sync workers close the connection
    after each answer anyway, and the load generator shares the two cores with the server, so
    every millisecond it spends parsing headers in Python is taken from what is measured.
    """

    def __init__(self, *, port: int, token: str, slug: str, stop_at: float) -> None:
        self.port, self.slug, self.stop_at = port, slug, stop_at
        self.head = (
            f"Host: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n"
            "Content-Type: application/json\r\nConnection: close\r\n"
        )
        self.lease_ms: list[float] = []
        self.judge_ms: list[float] = []
        self.created: list[tuple[int, int]] = []  # (judgment id, comparison id)
        self.statuses: Counter = Counter()
        self.errors: list[str] = []

    def call(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes, float]:
        request = (
            f"{method} {path} HTTP/1.1\r\n{self.head}Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        started = time.perf_counter()
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as sock:
            sock.sendall(request)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        elapsed_ms = (time.perf_counter() - started) * 1000
        head, _, data = b"".join(chunks).partition(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1]), data, elapsed_ms

    def run(self) -> None:
        try:
            while time.monotonic() < self.stop_at:
                status, data, ms = self.call(
                    "GET", f"/api/v1/projects/{self.slug}/comparisons/next"
                )
                self.statuses[f"next {status}"] += 1
                if status == 204:
                    return
                self.lease_ms.append(ms)
                item = json.loads(data)
                status, data, ms = self.call(
                    "POST", f"/api/v1/comparisons/{item['id']}/judgment", b'{"choice": "a"}'
                )
                self.statuses[f"judgment {status}"] += 1
                self.judge_ms.append(ms)
                if status == 201:
                    self.created.append((json.loads(data)["id"], item["id"]))
        except Exception as exc:  # shown in the report
            self.errors.append(repr(exc))


def http_worker(port: int, token: str, slug: str, stop_at: float) -> "DirectResult":
    """A Client's loop in its own process: sixteen clients are sixteen programs, not sixteen
    threads behind one interpreter lock (that lock would add its own waits to the latencies)."""
    client = Client(port=port, token=token, slug=slug, stop_at=stop_at)
    started = time.process_time()
    client.run()
    return DirectResult(
        cpu_seconds=time.process_time() - started,
        lease_ms=client.lease_ms,
        judge_ms=client.judge_ms,
        created=client.created,
        statuses=client.statuses,
        errors=client.errors,
    )


@dataclass
class DirectResult:
    lease_ms: list[float] = field(default_factory=list)
    judge_ms: list[float] = field(default_factory=list)
    created: list[tuple[int, int]] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    cpu_seconds: float = 0.0


def direct_worker(user_id: int, project_id: int, stop_at: float) -> DirectResult:
    """The same loop without HTTP, in its own process: the services called directly.

    The difference to the API column is what HTTP, Django's request cycle, django-ninja and
    gunicorn add on top of the queue's own database work.
    """
    from django.contrib.auth import get_user_model
    from django.db import connection

    from annotate.models import Project
    from annotate.services import judgment_submit, lease_next_comparison

    result = DirectResult()
    user = get_user_model().objects.get(pk=user_id)
    project = Project.objects.get(pk=project_id)
    try:
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            leased = lease_next_comparison(project=project, annotator=user)
            if leased is None:
                break
            result.lease_ms.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            judgment, created = judgment_submit(comparison=leased[0], annotator=user, choice="a")
            result.judge_ms.append((time.perf_counter() - started) * 1000)
            result.statuses["created" if created else "repeat"] += 1
            result.created.append((judgment.pk, leased[0].pk))
    except Exception as exc:  # shown in the report
        result.errors.append(repr(exc))
    finally:
        connection.close()
    return result


def run_direct(project, users, seconds: float) -> tuple[list[DirectResult], float]:
    from django.db import connections

    connections.close_all()  # forked children open their own
    stop_at = time.monotonic() + seconds
    began = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(len(users)) as pool:
        results = pool.starmap(direct_worker, [(user.pk, project.pk, stop_at) for user in users])
    return results, time.perf_counter() - began


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes so far (Linux /proc), 0 for any gone."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def server_pids(gunicorn_pid: int, database: str) -> tuple[list[int], list[int]]:
    """gunicorn and its workers; the PostgreSQL backends serving the bench database."""
    from django.db import connection

    workers = [
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and _parent(int(entry.name)) == gunicorn_pid
    ]
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            [database],
        )
        backends = [row[0] for row in cursor.fetchall()]
    return [gunicorn_pid, *workers], backends


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def explain_queue(project) -> str:
    """Execution time and index of the candidate query, for a fresh annotator."""
    from django.db import connection
    from django.utils import timezone

    from annotate.services.queue_sql import CANDIDATE_SQL

    sql = CANDIDATE_SQL.format(tried="", lock="FOR UPDATE OF c SKIP LOCKED")
    params = {"project": project.pk, "user": 0, "now": timezone.now(), "overlap": project.overlap}
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, params)
        plan = cursor.fetchone()[0]
    plan = plan[0] if isinstance(plan, list) else json.loads(plan)[0]
    indexes = sorted(set(_index_names(plan["Plan"])))
    return f"{plan['Execution Time']:.2f} ms, {', '.join(indexes) or 'no index'}"


def _index_names(node: dict):
    if "Index Name" in node and node.get("Relation Name") == "annotate_comparison":
        yield node["Index Name"]
    for child in node.get("Plans", []):
        yield from _index_names(child)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return (
        statistics.quantiles(values, n=100, method="inclusive")[q - 1]
        if len(values) > 1
        else values[0]
    )


def check(project, clients: list[Client]) -> dict[str, int]:
    """Compare what the clients were told with what the database holds."""
    from django.db.models import Count

    from annotate.models import Comparison, Judgment

    told = [pair for client in clients for pair in client.created]
    rows = dict(
        Judgment.objects.filter(comparison__project=project).values_list("id", "comparison_id")
    )
    per_comparison = Counter(rows.values())
    counters = dict(
        Comparison.objects.filter(project=project, judgment_count__gt=0).values_list(
            "id", "judgment_count"
        )
    )
    distinct = Judgment.objects.values("comparison", "annotator").annotate(n=Count("id"))
    return {
        "judgments reported created": len(told),
        "judgment rows": len(rows),
        "lost (created, but no such row)": sum(1 for jid, cid in told if rows.get(jid) != cid),
        "doubled (same id twice)": len(told) - len({jid for jid, _ in told}),
        "annotator twice on a comparison": distinct.filter(n__gt=1).count(),
        "comparisons over the overlap": sum(
            1 for n in per_comparison.values() if n > project.overlap
        ),
        "counter != rows": sum(1 for cid, n in per_comparison.items() if counters.get(cid) != n)
        + sum(1 for cid in counters if cid not in per_comparison),
    }


def run_clients(*, port: int, tokens: list[str], slug: str, seconds: float):
    """The HTTP clients, one process each: (results, elapsed, load before, load after)."""
    from django.db import connections

    connections.close_all()  # nothing of ours crosses the fork
    load_before = os.getloadavg()[0]
    with multiprocessing.get_context("fork").Pool(len(tokens)) as pool:
        began = time.perf_counter()
        stop_at = time.monotonic() + seconds
        results = pool.starmap(http_worker, [(port, token, slug, stop_at) for token in tokens])
        elapsed = time.perf_counter() - began
    return results, elapsed, load_before, os.getloadavg()[0]


def cpu_stolen() -> tuple[int, int]:
    """(steal, total) CPU ticks of the machine so far: what the hypervisor gave to others."""
    ticks = [int(value) for value in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    return ticks[7], sum(ticks[:8])


def summary(clients: list, elapsed: float) -> dict[str, str]:
    lease_ms = [ms for client in clients for ms in client.lease_ms]
    judge_ms = [ms for client in clients for ms in client.judge_ms]
    statuses = sum((client.statuses for client in clients), Counter())
    judgments = sum(len(client.created) for client in clients)
    return {
        "lease-next p50 / p99": (
            f"{percentile(lease_ms, 50):.1f} / {percentile(lease_ms, 99):.1f} ms"
        ),
        "judgment-submit p50 / p99": (
            f"{percentile(judge_ms, 50):.1f} / {percentile(judge_ms, 99):.1f} ms"
        ),
        "judgments/s": f"{judgments / elapsed:.0f}",
        "calls": ", ".join(f"{key}: {value}" for key, value in sorted(statuses.items())),
    }


def main() -> int:
    args = parse_args()
    os.environ["DATABASE_URL"] = args.database_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.pop("TEST_DATABASE_NAME", None)
    recreate_database(args.database_url)
    import django

    django.setup()
    from django.contrib.auth import get_user_model

    started = time.perf_counter()
    project, tokens = fill(comparisons=args.comparisons, clients=args.clients, overlap=args.overlap)
    print(f"filled {args.comparisons:,} comparisons in {time.perf_counter() - started:.0f}s")

    server = start_gunicorn(
        url=args.database_url, port=args.port, workers=args.workers, threads=args.threads
    )
    try:
        database = urlparse(args.database_url).path.lstrip("/")
        app_before, db_before = map(cpu_seconds, server_pids(server.pid, database))
        stolen_before = cpu_stolen()
        http_clients, http_elapsed, load_before, load_after = run_clients(
            port=args.port, tokens=tokens, slug=project.slug, seconds=args.seconds
        )
        stolen = [after - before for after, before in zip(cpu_stolen(), stolen_before, strict=True)]
        # Backends opened during the run started at zero CPU, so the difference is the run's.
        app_after, db_after = map(cpu_seconds, server_pids(server.pid, database))
        app_cpu, db_cpu = app_after - app_before, db_after - db_before
    finally:
        server.terminate()
        server.wait(timeout=30)
    users = get_user_model().objects.filter(username__startswith="bench").order_by("id")
    direct_clients, direct_elapsed = run_direct(project, list(users), args.seconds)
    load_end = os.getloadavg()[0]

    clients = http_clients + direct_clients
    results = check(project, clients)
    errors = [error for client in clients for error in client.errors]
    print()
    print(
        f"{args.comparisons:,} comparisons, overlap {args.overlap}, {args.clients} client "
        f"processes, {args.seconds:.0f} s per column, gunicorn {args.workers} workers "
        f"x {args.threads} threads, "
        f"{os.cpu_count()} CPUs, load average {load_before:.1f} -> {load_after:.1f} -> "
        f"{load_end:.1f}; CPU time taken by the hypervisor during the API column: "
        f"{100 * stolen[0] / max(stolen[1], 1):.0f}%"
    )
    print()
    http_row, direct_row = (
        summary(http_clients, http_elapsed),
        summary(direct_clients, direct_elapsed),
    )
    print("| measure | through the API (gunicorn) | services in-process (no HTTP) |")
    print("|---|---|---|")
    for name in http_row:
        print(f"| {name} | {http_row[name]} | {direct_row[name]} |")
    http_judgments = sum(len(client.created) for client in http_clients)
    if http_judgments:
        app_ms, db_ms = app_cpu / http_judgments * 1000, db_cpu / http_judgments * 1000
        print(
            f"| CPU per judgment (lease + submit): gunicorn + PostgreSQL | {app_ms:.1f} + "
            f"{db_ms:.1f} ms; {os.cpu_count()} idle cores would serve about "
            f"{os.cpu_count() * 1000 / (app_ms + db_ms):.0f} judgments/s | |"
        )
        client_ms = sum(client.cpu_seconds for client in http_clients) / http_judgments * 1000
        print(f"| CPU per judgment of the client processes | {client_ms:.1f} ms | |")
    print(f"| queue query alone (EXPLAIN ANALYZE, after the run) | {explain_queue(project)} | |")
    print()
    print("| check (both columns, against the database) | count |")
    print("|---|---|")
    for name, value in results.items():
        print(f"| {name} | {value:,} |")
    if errors:
        print(f"client errors: {errors[:5]}")
    problems = {
        name: n
        for name, n in results.items()
        if name not in ("judgments reported created", "judgment rows")
    }
    bad = (
        errors
        or any(problems.values())
        or results["judgments reported created"] != results["judgment rows"]
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
