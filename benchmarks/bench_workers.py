"""Workers: 1, 2 and 4 `newsletter worker --exit-when-idle` processes sharing one run on PostgreSQL,
(a) against a fake Resend that answers every request after 200 ms, then (b) without latency.

Each measurement has a PostgreSQL schema of its own with the same readers (default 20,000), a
run started by `newsletter send --workers 0`, batches of 100, a `send_rate` too high to bind
(10,000 requests/s) and a fresh fake server in a process of its own. It is timed from the moment
the workers start until the last one exits, and counts only if the run finished with every
reader delivered once (the fake's /_stats: as many deliveries as readers, no duplicates).

Goals: (a) 4 workers at least 3.5x the emails/s of one worker: the work is waiting on the
provider, so workers add up. (b) no goal: the speed-up, and what limits it on this 2-core
machine, measured: the CPU time of the workers (getrusage of the reaped children), of the fake
server and of the workers' PostgreSQL backends (/proc/PID/stat), against the wall time and
against what the whole machine was busy with (/proc/stat; it is shared). Also the peak memory
of one worker: VmHWM from /proc/PID/status, polled every 50 ms while it runs (it only grows,
so the last reading before it exits is its peak, give or take a last burst).

The digest is the example one (digests/2026-04-22-open-models-weekly.md; --digest for another).
A default run takes about 3 minutes on this machine; --readers for fewer or more.
Run: scripts/bench.sh, or .venv/bin/python benchmarks/bench_workers.py [--readers N] [--digest FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

from memory import peak_mb

ROOT = Path(__file__).resolve().parent.parent
DIGEST = ROOT / "digests" / "2026-04-22-open-models-weekly.md"
PG_URL = os.environ.get("NEWSLETTER_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
SECRET_KEY = "bench-workers-secret-key-0123456789abcdef"
COMMAND = [sys.executable, "-m", "newsletter"]
CATEGORY_SETS = [(), ("ai-tech",), ("ai-research",), ("essays",), ("ai-news", "essays"), ("ai-tech", "ai-research")]
COUNTS = (1, 2, 4)
TICK = os.sysconf("SC_CLK_TCK")
CORES = os.cpu_count() or 1
LATENCY = 0.2


def populate(db_url: str, count: int) -> None:
    from newsletter.config import load_settings
    from newsletter.store import insert_many, reader_categories, readers, utcnow
    from newsletter.subscribers import Subscribers, new_token

    settings = load_settings(ROOT / "newsletter.toml", env={})
    subs = Subscribers.open(db_url, settings.categories)
    rng, now = random.Random(7), utcnow()
    with subs.engine.begin() as conn:
        for start in range(0, count, 20_000):
            rows = [{"email": f"reader{i}@example{i % 89}.com", "name": None, "status": "active",
                     "token": new_token(), "created_at": now, "status_changed_at": now, "confirmed_at": now,
                     "consent_at": now, "consent_method": "import", "consent_ip": None, "consent_source": "bench"}
                    for i in range(start, min(start + 20_000, count))]
            insert_many(conn, readers, rows)
            ids = dict(conn.execute(readers.select().with_only_columns(readers.c.email, readers.c.id)
                                    .where(readers.c.email.in_([r["email"] for r in rows]))).all())
            insert_many(conn, reader_categories, [{"reader_id": ids[r["email"]], "category": c}
                                                  for r in rows for c in rng.choice(CATEGORY_SETS)])
    subs.close()


def child_fake(delay: float) -> None:
    """The fake Resend server, answering every request `delay` seconds late (each request in a
    thread of its own, so concurrent requests wait concurrently); keeps no email bodies."""
    sys.path.insert(0, str(ROOT))
    from tests.fake_resend import FakeResend

    stopping = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stopping)  # for sigwait below; the server's threads inherit it
    server = FakeResend(0, keep_bodies=False).start()
    server.switches.delay = delay
    print(json.dumps({"url": server.url, "api_key": server.state.api_key}), flush=True)
    signal.sigwait(stopping)
    server.stop()


def start_fake(delay: float) -> tuple[subprocess.Popen, dict]:
    fake = subprocess.Popen([sys.executable, __file__, "--fake", str(delay)], stdout=subprocess.PIPE, text=True)
    return fake, json.loads(fake.stdout.readline())


def stats(url: str) -> dict:
    with urllib.request.urlopen(url + "/_stats", timeout=30) as response:
        return json.loads(response.read())


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a live process, from /proc/PID/stat."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICK


def machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of every core since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Schema:
    """A PostgreSQL schema of its own; its connections carry its name as application_name, so
    the workers' backends can be found in pg_stat_activity."""

    def __init__(self, admin):
        self.admin, self.name = admin, f"bw_{uuid.uuid4().hex[:12]}"
        self.url = f"{PG_URL}?options=-csearch_path%3D{self.name}&application_name={self.name}"

    def __enter__(self) -> "Schema":
        import sqlalchemy as sa

        with self.admin.begin() as conn:
            conn.execute(sa.text(f"CREATE SCHEMA {self.name}"))
        return self

    def __exit__(self, *exc) -> None:
        import sqlalchemy as sa

        with self.admin.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {self.name} CASCADE"))

    def backends(self) -> list[int]:
        import sqlalchemy as sa

        with self.admin.connect() as conn:
            return list(conn.execute(sa.text("SELECT pid FROM pg_stat_activity WHERE application_name = :name"),
                                     {"name": self.name}).scalars())


def environment(db_url: str, fake: dict, tmp: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEWSLETTER_", "RESEND_"))}
    return env | {"NEWSLETTER_CONFIG": str(ROOT / "newsletter.toml"), "NEWSLETTER_DATABASE_URL": db_url,
                  "NEWSLETTER_SECRET_KEY": SECRET_KEY, "NEWSLETTER_PROVIDER": "resend",
                  "NEWSLETTER_SEND_RATE": "10000", "NEWSLETTER_BATCH_SIZE": "100",
                  "NEWSLETTER_OUTPUT_DIR": f"{tmp}/out", "NEWSLETTER_OUTBOX_DIR": f"{tmp}/outbox",
                  "RESEND_API_KEY": fake["api_key"], "RESEND_API_URL": fake["url"]}


def log_time(line: str) -> float | None:
    """The epoch seconds of a worker's log line ("2026-05-01 10:00:00,123 INFO ...")."""
    try:
        stamp, millis = line[:23].split(",")
        return time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(millis) / 1000
    except ValueError:
        return None


def measure(admin, readers: int, workers: int, delay: float, digest: Path, deadline: float) -> dict:
    """One measurement: a fresh schema and fake, the run started, `workers` workers timed."""
    with tempfile.TemporaryDirectory() as tmp, Schema(admin) as schema:
        subprocess.run([sys.executable, __file__, "--populate", schema.url, str(readers)], check=True)
        fake, where = start_fake(delay)
        try:
            env = environment(schema.url, where, tmp)
            sent = subprocess.run([*COMMAND, "send", str(digest), "--yes", "--workers", "0"], env=env, cwd=tmp,
                                  capture_output=True, text=True, timeout=300)
            if sent.returncode != 0 or "left to `newsletter worker` processes" not in sent.stdout:
                raise SystemExit(f"`newsletter send --workers 0` failed:\n{sent.stdout}{sent.stderr}")
            result = run_workers(schema, env, tmp, workers, fake.pid, deadline)
            result["fake"] = stats(where["url"])
        finally:
            fake.terminate()
            fake.wait()
        result.update(ledger_figures(schema.url))
    result.update(readers=readers, workers=workers, delay=delay)
    return result


def run_workers(schema: Schema, env: dict, tmp: str, count: int, fake_pid: int, deadline: float) -> dict:
    logs = [open(f"{tmp}/worker{i}.log", "w+") for i in range(count)]
    exits: dict[int, float] = {}
    peaks: dict[int, float] = {}
    backend_cpu: dict[int, float] = {}
    fake_before, busy_before, children_before = cpu_seconds(fake_pid), machine_ticks(), child_cpu()
    epoch, start = time.time(), time.perf_counter()
    crew = [subprocess.Popen([*COMMAND, "worker", "--exit-when-idle"], env=env, cwd=tmp,
                             stdout=subprocess.DEVNULL, stderr=log, text=True) for log in logs]

    def reap(process: subprocess.Popen) -> None:
        process.wait()
        exits[process.pid] = time.perf_counter()

    reapers = [threading.Thread(target=reap, args=(p,), daemon=True) for p in crew]
    for reaper in reapers:
        reaper.start()
    looked = 0.0
    stuck: list[int] = []
    while len(exits) < count:
        now = time.perf_counter()
        if now - start > deadline:
            stuck = [p.pid for p in crew if p.pid not in exits]
            break
        for process in crew:
            if process.pid not in exits:
                try:  # its own high-water mark; it only grows, so the last reading is its peak
                    peaks[process.pid] = peak_mb(process.pid)
                except (OSError, RuntimeError):  # gone, or a zombie not reaped yet
                    pass
        if now - looked > 0.25:  # the backends come and go with the workers' connections
            looked = now
            for pid in schema.backends():
                seconds = cpu_seconds(pid)
                if seconds is not None:
                    backend_cpu[pid] = seconds
        time.sleep(0.05)
    wall = (max(exits.values()) if exits and not stuck else time.perf_counter()) - start
    busy_after, fake_after = machine_ticks(), cpu_seconds(fake_pid)
    if stuck:
        for process in crew:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for reaper in reapers:
            reaper.join(30)
        for process in crew:
            if process.poll() is None:
                process.kill()
        for reaper in reapers:
            reaper.join()
    for reaper in reapers:
        reaper.join()
    texts = []
    for log in logs:
        log.seek(0)
        texts.append(log.read())
        log.close()
    taking_part = [t for text in texts for line in text.splitlines() if "taking part" in line
                   if (t := log_time(line)) is not None]
    busy = (busy_after[0] - busy_before[0]) / TICK
    return {"wall": wall, "stuck": stuck, "codes": [p.returncode for p in crew],
            "first_part": min(taking_part) - epoch if taking_part else None,
            "peak": max(peaks.values()) if peaks else 0.0, "peaks": [peaks.get(p.pid, 0.0) for p in crew],
            "workers_cpu": child_cpu() - children_before, "fake_cpu": (fake_after or 0.0) - (fake_before or 0.0),
            "pg_cpu": sum(backend_cpu.values()), "machine_busy": busy,
            "errors": [line for text in texts for line in text.splitlines() if " ERROR " in line or "Traceback" in line]}


def ledger_figures(db_url: str) -> dict:
    import sqlalchemy as sa

    from newsletter.ledger import Ledger

    engine = sa.create_engine(db_url)
    try:
        ledger = Ledger(engine)
        runs = ledger.runs()
        if len(runs) != 1:
            return {"status": f"{len(runs)} runs", "counts": {}, "shares": []}
        run = runs[0]
        return {"status": run.status.value, "reason": run.reason, "counts": ledger.counts(run.id),
                "shares": sorted((w.sent for w in ledger.workers(run.id)), reverse=True)}
    finally:
        engine.dispose()


def check(m: dict) -> list[str]:
    """What is wrong with a measurement: the run, the workers, the deliveries."""
    problems = []
    fake, n = m["fake"], m["readers"]
    if m["stuck"]:
        problems.append(f"workers {m['stuck']} had not exited after {m['wall']:.0f} s (stopped)")
    if any(code != 0 for code in m["codes"]):
        problems.append(f"exit codes {m['codes']}")
    if m["status"] != "finished":
        problems.append(f"run {m['status']}" + (f" ({m['reason']})" if m.get("reason") else ""))
    if m["counts"].get("sent") != n:
        problems.append(f"ledger counts {m['counts']}")
    if fake["deliveries"] != n or fake["addresses"] != n or fake["duplicates"]:
        problems.append(f"fake: {fake['deliveries']:,} deliveries to {fake['addresses']:,} addresses, "
                        f"{fake['duplicates']} duplicates")
    if set(fake["requests"]) - {"200"}:
        problems.append(f"answers by status {fake['requests']}")
    problems += [f"log: {line}" for line in m["errors"][:5]]
    return problems


def report(label: str, results: list[dict], goal: float | None) -> bool:
    one = results[0]["readers"] / results[0]["wall"]
    ok = True
    for m in results:
        rate = m["readers"] / m["wall"]
        problems = check(m)
        ok &= not problems
        start = f", first batch after {m['first_part']:.1f} s" if m["first_part"] is not None else ""
        print(f"    {m['workers']} worker{'s' if m['workers'] > 1 else ' '}: {rate:,.0f} emails/s, "
              f"{rate / one:.2f}x one worker; {m['wall']:.1f} s from start to the last exit{start}; "
              f"{m['fake']['requests'].get('200', 0)} requests, emails per worker {m['shares']}; "
              f"CPU: workers {m['workers_cpu']:.1f} s, fake {m['fake_cpu']:.1f} s, PostgreSQL "
              f"{m['pg_cpu']:.1f} s; machine busy {m['machine_busy'] / m['wall']:.2f} of {CORES} cores"
              + ("" if not problems else "\n      NOT COUNTED: " + "; ".join(problems)))
    last = results[-1]
    speedup = last["readers"] / last["wall"] / one
    if goal is not None:
        print(f"    {label}: {last['workers']} workers {speedup:.2f}x one worker (goal at least {goal}x): "
              f"{'met' if speedup >= goal and ok else 'NOT met'}")
    return ok


def limits(results: list[dict]) -> str:
    """A sentence on what limits sending without latency, from the figures measured."""
    one, last = results[0], results[-1]
    n, wall = last["readers"], last["wall"]
    ours = last["workers_cpu"] + last["fake_cpu"] + last["pg_cpu"]
    per_email = {what: last[f"{what}_cpu"] / n * 1000 for what in ("workers", "fake", "pg")}
    busy = last["machine_busy"] / wall
    share = (f"workers {last['workers_cpu'] / wall:.2f} cores ({per_email['workers']:.2f} ms of CPU per "
             f"email: composing, JSON encoding, HTTP, the ledger), the fake {last['fake_cpu'] / wall:.2f} "
             f"({per_email['fake']:.2f} ms per email, most of it decoding the JSON), PostgreSQL "
             f"{last['pg_cpu'] / wall:.2f}, everything else on the machine {max(0.0, busy - ours / wall):.2f}")
    solo = (f"one worker alone used {one['workers_cpu'] / one['wall']:.2f} of a core and the fake "
            f"{one['fake_cpu'] / one['wall']:.2f}: a worker waits for each answer before its next batch, so "
            f"its requests and the fake's decoding take turns")
    if busy >= 0.9 * CORES:
        return (f"what limits it: the {CORES} cores. With {last['workers']} workers the machine was busy "
                f"{busy:.2f} of {CORES} cores ({share}); {solo}. More workers cannot go faster here: "
                f"{ours / n * 1000:.2f} ms of CPU per email over {CORES} cores allows at most "
                f"{n / ours * CORES:,.0f} emails/s, and the fake decoding the requests takes "
                f"{last['fake_cpu'] / ours:.0%} of this benchmark's CPU, a cost a real provider bears on its "
                f"own machines")
    return (f"what limits it: not the CPU alone: with {last['workers']} workers the machine was busy only "
            f"{busy:.2f} of {CORES} cores ({share}); {solo}; the rest is waiting (the database, the network "
            f"stack, the workers polling for batches)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readers", type=int, default=20_000)
    parser.add_argument("--digest", type=Path, default=DIGEST)
    parser.add_argument("--deadline", type=float, default=240.0,
                        help="seconds a measurement's workers may take before they are stopped and reported")
    parser.add_argument("--populate", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--fake", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.populate:
        populate(args.populate[0], int(args.populate[1]))
        return
    if args.fake is not None:
        child_fake(args.fake)
        return
    import sqlalchemy as sa

    admin = sa.create_engine(PG_URL)
    began = time.perf_counter()
    ok = True
    try:
        print(f"{args.readers:,} readers, batches of 100, send_rate 10,000, digest {args.digest.name}, "
              f"PostgreSQL, {CORES} cores")
        print(f"(a) the fake Resend answering every request after {LATENCY * 1000:.0f} ms:")
        latency = [measure(admin, args.readers, n, LATENCY, args.digest, args.deadline) for n in COUNTS]
        ok &= report("(a)", latency, 3.5)
        print("(b) the fake Resend answering at once:")
        at_once = [measure(admin, args.readers, n, 0.0, args.digest, args.deadline) for n in COUNTS]
        ok &= report("(b)", at_once, None)
        print(f"    {limits(at_once)}")
        peak = max(m["peak"] for m in latency + at_once)
        print(f"peak memory of one worker: {peak:.0f} MB (the largest VmHWM of any worker in any measurement; "
              f"one worker alone: {latency[0]['peak']:.0f} MB with latency, {at_once[0]['peak']:.0f} MB without)")
        print(f"({time.perf_counter() - began:.0f} s in all)")
    finally:
        admin.dispose()
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
