"""Workers: 1, 2 and 4 `newsletter worker` processes sharing a run on PostgreSQL.

(a) Against a fake Resend that answers every request 200 ms after it arrived (as a provider with
that latency would: its own work, decoding the JSON, done within that time), with the workers
running and waiting when the run starts, as deployed; (a2) the same with the workers started after the run,
with --exit-when-idle, as a batch job; then (b) without latency, as a batch job.

Each measurement has a PostgreSQL schema of its own with the same readers (default 20,000), a
run started by `newsletter send --workers 0`, batches of 100, a `send_rate` too high to bind
(10,000 requests/s) and a fresh fake server in a process of its own. (a) is timed by the
database's clock from the run's creation to its end (the workers, woken by its NOTIFY, load the
variants it keeps in that time); (a2) and (b) from the moment the workers start until the last one exits,
their start (interpreter, imports: about a second of CPU each) included. A measurement counts
only if the run finished with every reader delivered once (the fake's /_stats: as many
deliveries as readers, no duplicates).

Goals: (a) 4 workers at least 3.5x the emails/s of one worker: the work is waiting on the
provider, so workers add up. (a2) and (b) no goal: the speed-up, and what limits it on this 2-core
machine, measured: the CPU time of the workers (getrusage of the reaped children), of the fake
server and of the workers' PostgreSQL backends (/proc/PID/stat), against the wall time and
against what the whole machine was busy with (/proc/stat; it is shared). Also the peak memory
of one worker: VmHWM from /proc/PID/status, polled every 50 ms while it runs (it only grows,
so the last reading before it exits is its peak, give or take a last burst).

The digest is the example one (digests/2026-04-22-open-models-weekly.md, 40 to 70 KB of HTML per
email; --digest for another): the fake decoding that JSON is not what limits (about a quarter of
the benchmark's CPU), so no smaller digest is needed. The machine is shared: each measurement says
how busy it was and how much of that was this benchmark. A default run takes about 3 minutes on
this 2-core machine (20,000 readers keeps it under 5; 50,000 take 6); --readers for fewer or more.
Run: scripts/bench.sh, or .venv/bin/python benchmarks/bench_workers.py [--readers N] [--digest FILE]
"""

from __future__ import annotations

import argparse
import json
import os
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

from bench_send import populate  # the same readers, in the same category sets
from memory import peak_mb

ROOT = Path(__file__).resolve().parent.parent
DIGEST = ROOT / "digests" / "2026-04-22-open-models-weekly.md"
PG_URL = os.environ.get("NEWSLETTER_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
SECRET_KEY = "bench-workers-secret-key-0123456789abcdef"
COMMAND = [sys.executable, "-m", "newsletter"]
COUNTS = (1, 2, 4)
TICK = os.sysconf("SC_CLK_TCK")
CORES = os.cpu_count() or 1
LATENCY = 0.2


def child_fake(delay: float) -> None:
    """The fake Resend server, answering every request `delay` seconds after it arrived (each
    request in a thread of its own, so concurrent requests wait concurrently); keeps no email bodies."""
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


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


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


def measure(admin, readers: int, workers: int, delay: float, digest: Path, deadline: float,
            running: bool = False) -> dict:
    """One measurement: a fresh schema and fake, the run started, `workers` workers timed.

    `running`: the workers are started first and wait, as deployed; the run is started once all
    of them are waiting, and timed from its creation to its end by the database's clock (the
    workers' start left out). Otherwise they start after the run, with --exit-when-idle, and are
    timed from their start to the last exit."""
    with tempfile.TemporaryDirectory() as tmp, Schema(admin) as schema:
        subprocess.run([sys.executable, __file__, "--populate", schema.url, str(readers)], check=True)
        fake, where = start_fake(delay)
        try:
            env = environment(schema.url, where, tmp)

            def start_run() -> None:
                sent = subprocess.run([*COMMAND, "send", str(digest), "--yes", "--workers", "0"], env=env, cwd=tmp,
                                      capture_output=True, text=True, timeout=300)
                if sent.returncode != 0 or "left to `newsletter worker` processes" not in sent.stdout:
                    raise SystemExit(f"`newsletter send --workers 0` failed:\n{sent.stdout}{sent.stderr}")
            if not running:
                start_run()
            result = run_workers(schema, env, tmp, workers, fake.pid, deadline, start_run if running else None)
            result["fake"] = stats(where["url"])
        finally:
            fake.terminate()
            fake.wait()
        result.update(ledger_figures(schema.url))
    result.update(readers=readers, workers=workers, delay=delay)
    return result


def idle_worker(admin) -> tuple[float, float]:
    """Wall and CPU seconds of a worker with no run to take part in: the start every worker pays
    (interpreter, imports, settings, connecting), without loading any run."""
    with tempfile.TemporaryDirectory() as tmp, Schema(admin) as schema:
        subprocess.run([sys.executable, __file__, "--populate", schema.url, "0"], check=True)
        env = environment(schema.url, {"api_key": "re_test_key", "url": "http://127.0.0.1:9"}, tmp)
        before, start = child_cpu(), time.perf_counter()
        subprocess.run([*COMMAND, "worker", "--exit-when-idle"], env=env, cwd=tmp, check=True,
                       capture_output=True, timeout=120)
        return time.perf_counter() - start, child_cpu() - before


def run_workers(schema: Schema, env: dict, tmp: str, count: int, fake_pid: int, deadline: float,
                start_run=None) -> dict:
    """`start_run`: start waiting workers, call it once all wait, and time the run (see `measure`)."""
    logs = [open(f"{tmp}/worker{i}.log", "w+") for i in range(count)]
    exits: dict[int, float] = {}
    peaks: dict[int, float] = {}
    backend_cpu: dict[int, float] = {}
    fake_before, busy_before, children_before = cpu_seconds(fake_pid), machine_ticks(), child_cpu()
    self_before = own_cpu()
    epoch, start = time.time(), time.perf_counter()
    flags = [] if start_run else ["--exit-when-idle"]
    crew = [subprocess.Popen([*COMMAND, "worker", *flags], env=env, cwd=tmp,
                             stdout=subprocess.DEVNULL, stderr=log, text=True) for log in logs]
    waiting = start_run is not None
    if waiting:
        waiting_by = time.perf_counter() + 60
        while not all("running for" in Path(log.name).read_text() for log in logs):
            if time.perf_counter() > waiting_by:
                raise SystemExit("the workers did not start within 60 s")
            time.sleep(0.05)
        busy_before, self_before, fake_before = machine_ticks(), own_cpu(), cpu_seconds(fake_pid)
        before_send = child_cpu()
        start_run()
        children_before += child_cpu() - before_send  # the `send` is not the workers' work

    def reap(process: subprocess.Popen) -> None:
        process.wait()
        exits[process.pid] = time.perf_counter()

    reapers = [threading.Thread(target=reap, args=(p,), daemon=True) for p in crew]
    for reaper in reapers:
        reaper.start()
    looked = checked = 0.0
    stuck: list[int] = []
    while len(exits) < count:
        now = time.perf_counter()
        if start_run and now - checked > 0.1 and (checked := now) and run_times(schema.url)[1] is not None:
            for process in crew:  # the run is over: the waiting workers are stopped, as a deployment would
                process.send_signal(signal.SIGTERM)
            start_run = None
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
    taking_part = [min((t for line in text.splitlines() if "taking part" in line
                        if (t := log_time(line)) is not None), default=None) for text in texts]
    taking_part = [t - epoch for t in taking_part if t is not None]
    if waiting and not stuck:  # timed by the database: from the run's creation to its end
        created, finished = run_times(schema.url)
        wall = (finished - created).total_seconds()
        taking_part = [t - (created.timestamp() - epoch) for t in taking_part]
    busy = (busy_after[0] - busy_before[0]) / TICK
    return {"wall": wall, "running": waiting, "stuck": stuck, "codes": [p.returncode for p in crew],
            "first_part": min(taking_part, default=None),  # the first worker sending its first batch
            "all_part": max(taking_part) if len(taking_part) == count else None,  # every worker sending
            "peak": max(peaks.values()) if peaks else 0.0, "peaks": [peaks.get(p.pid, 0.0) for p in crew],
            "workers_cpu": child_cpu() - children_before, "fake_cpu": (fake_after or 0.0) - (fake_before or 0.0),
            "pg_cpu": sum(backend_cpu.values()), "machine_busy": busy, "self_cpu": own_cpu() - self_before,
            "errors": [line for text in texts for line in text.splitlines()
                       if " ERROR " in line or "Traceback" in line]}


def run_times(db_url: str):
    """(created_at, finished_at) of the schema's run; finished_at None while it is not over."""
    import sqlalchemy as sa

    engine = sa.create_engine(db_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            row = conn.execute(sa.text("SELECT created_at, finished_at FROM send_runs ORDER BY id LIMIT 1")).first()
    finally:
        engine.dispose()
    return (row[0], row[1]) if row else (None, None)


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
    """Print each measurement; whether all of them count (finished, every reader once)."""
    one = results[0]
    counted = [not check(m) for m in results]
    for m, good in zip(results, counted):
        rate = m["readers"] / m["wall"]
        phase = ""
        if m["first_part"] is not None:
            phase = (f"; the first worker sending after {m['first_part']:.1f} s"
                     + (f", all after {m['all_part']:.1f} s" if m["workers"] > 1 and m["all_part"] else "")
                     + (" (woken by the run, loading the variants it keeps)" if m["running"] else
                        " (start: interpreter, imports, loading the variants)"))
        timed = "from the run's creation to its end" if m["running"] else "from start to the last exit"
        figure = (f"{rate:,.0f} emails/s, " + (f"{rate / (one['readers'] / one['wall']):.2f}x one worker"
                                             if counted[0] else "one worker not counted") if good else
                  f"not counted ({m['fake']['deliveries']:,} of {m['readers']:,} delivered)")
        ours = m["workers_cpu"] + m["fake_cpu"] + m["pg_cpu"] + m["self_cpu"]
        print(f"    {m['workers']} worker{'s' if m['workers'] > 1 else ' '}: {figure}; {m['wall']:.1f} s {timed}{phase}; {m['fake']['requests'].get('200', 0)} requests, emails per worker "
              f"{m['shares']}")
        print(f"      CPU: workers {m['workers_cpu']:.1f} s, fake {m['fake_cpu']:.1f} s, their PostgreSQL backends "
              f"{m['pg_cpu']:.1f} s, this script {m['self_cpu']:.1f} s = {ours / m['wall']:.2f} cores; the "
              f"machine was busy {m['machine_busy'] / m['wall']:.2f} of {CORES} cores"
              + ("" if good else "\n      NOT COUNTED: " + "; ".join(check(m))))
    last = results[-1]
    if not (counted[0] and counted[-1]):
        print(f"    {label} speed-up of {last['workers']} workers over one: not measured (a run did not count)"
              + (f"; goal at least {goal}x NOT met" if goal else ""))
        return False
    speedup = one["wall"] / last["wall"]
    sending = ""
    if one["first_part"] is not None and last["first_part"] is not None:
        sending = (f"; from the first worker's first batch to the last exit (the workers' start left out): "
                   f"{(one['wall'] - one['first_part']) / (last['wall'] - last['first_part']):.2f}x")
    print(f"    {label} speed-up of {last['workers']} workers over one: {speedup:.2f}x "
          + ("(workers running before the run)" if last["running"] else "end to end (workers started with the run)")
          + (f" (goal at least {goal}x: {'met' if speedup >= goal and all(counted) else 'NOT met'})" if goal else "")
          + sending)
    return all(counted)


def limits(results: list[dict], idle_cpu: float) -> str:
    """A sentence on what limits sending without latency, from the figures measured."""
    one, last = results[0], results[-1]
    n, wall = last["readers"], last["wall"]
    ours = last["workers_cpu"] + last["fake_cpu"] + last["pg_cpu"] + last["self_cpu"]
    busy = last["machine_busy"] / wall
    start = (last["workers_cpu"] - one["workers_cpu"]) / (last["workers"] - 1)
    ms = {what: one[f"{what}_cpu"] / n * 1000 for what in ("workers", "fake", "pg")}
    each = sum(ms.values())
    costs = (f"per email (one worker's run): the worker {ms['workers']:.2f} ms of CPU (composing, JSON encoding, "
             f"HTTP, the ledger; its start included), the fake {ms['fake']:.2f} ms (most of it decoding the "
             f"JSON), PostgreSQL {ms['pg']:.2f} ms: {each:.2f} ms, so {CORES} cores to ourselves would allow at "
             f"most {CORES * 1000 / each:,.0f} emails/s; each further worker adds {start:.1f} s of CPU (a worker "
             f"with no run starts and exits in {idle_cpu:.1f} s of CPU)")
    serial = (f"one worker alone kept only {(one['workers_cpu'] + one['fake_cpu'] + one['pg_cpu']) / one['wall']:.2f} "
              f"cores busy (worker {one['workers_cpu'] / one['wall']:.2f}, fake {one['fake_cpu'] / one['wall']:.2f}, "
              f"PostgreSQL {one['pg_cpu'] / one['wall']:.2f}): it waits for each answer and each ledger write "
              f"before its next batch, so the three take turns")
    if busy >= 0.9 * CORES:
        return (f"what limits it: the {CORES} cores are all busy. With {last['workers']} workers the machine was "
                f"busy {busy:.2f} of {CORES} cores: this benchmark {ours / wall:.2f} (workers "
                f"{last['workers_cpu'] / wall:.2f}, fake {last['fake_cpu'] / wall:.2f}, PostgreSQL "
                f"{last['pg_cpu'] / wall:.2f}; the fake's decoding is {last['fake_cpu'] / ours:.0%} of this "
                f"benchmark's CPU), other processes on this shared machine and the kernel "
                f"{max(0.0, busy - ours / wall):.2f}; {costs}; {serial}")
    return (f"what limits it: not the CPU alone: with {last['workers']} workers the machine was busy only "
            f"{busy:.2f} of {CORES} cores (this benchmark {ours / wall:.2f}); {costs}; {serial}; the rest is "
            f"waiting (the database's locks and commits, the workers polling for batches)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readers", type=int, default=20_000)
    parser.add_argument("--digest", type=Path, default=DIGEST)
    parser.add_argument("--deadline", type=float, default=240.0,
                        help="seconds a measurement's workers may take before they are stopped and reported")
    parser.add_argument("--only", choices=("a", "a2", "b"), action="append",
                        help="measure only this part (again for more); all three by default")
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
        idle_wall, idle_cpu = idle_worker(admin)
        print(f"a worker with no run to take part in starts and exits in {idle_wall:.1f} s ({idle_cpu:.1f} s of CPU): "
              f"the start each worker pays before it loads a run")
        parts = set(args.only or ("a", "a2", "b"))
        measured: list[dict] = []
        if "a" in parts:
            print(f"(a) the fake Resend answering every request {LATENCY * 1000:.0f} ms after it arrived, the workers running "
                  "and waiting when the run starts, as deployed (they LISTEN for it):")
            running = [measure(admin, args.readers, n, LATENCY, args.digest, args.deadline, running=True)
                       for n in COUNTS]
            ok &= report("(a)", running, 3.5)
            measured += running
        if "a2" in parts:
            print("(a2) the same, each worker started with --exit-when-idle after the run was created (a batch job: "
                  "its start, about a second of CPU, is counted):")
            latency = [measure(admin, args.readers, n, LATENCY, args.digest, args.deadline) for n in COUNTS]
            ok &= report("(a2)", latency, None)
            measured += latency
        if "b" in parts:
            print("(b) the fake Resend answering at once:")
            at_once = [measure(admin, args.readers, n, 0.0, args.digest, args.deadline) for n in COUNTS]
            ok &= report("(b)", at_once, None)
            if all(not check(m) for m in at_once):
                print(f"    {limits(at_once, idle_cpu)}")
            measured += at_once
        alone = {m["delay"] > 0: m["peak"] for m in measured if m["workers"] == 1}
        print(f"peak memory of one worker: {max(m['peak'] for m in measured):.0f} MB (the largest VmHWM of any "
              "worker in any measurement; one worker alone: "
              + ", ".join(f"{mb:.0f} MB {'with' if delayed else 'without'} latency" for delayed, mb in alone.items())
              + ")")
        print(f"({time.perf_counter() - began:.0f} s in all)")
    finally:
        admin.dispose()
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
