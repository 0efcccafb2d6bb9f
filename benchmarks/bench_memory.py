"""Peak memory of a send at 100k, 1M (and, asked for, 10M) readers, on SQLite and PostgreSQL:
`send --dry-run`, and a real send to the outbox and to the fake Resend server; and the time of
the run's setup (the snapshot of who is due, copied into the ledger).

Goals: every peak at most 120 MB and flat in N; the setup of 1M readers within 5 s on SQLite.
A real send of millions of emails would take hours (and the outbox as many files): each real
send here sends for `--seconds` (default 15) after its setup and is then paused with SIGINT, as Ctrl-C does. The
peak covers what grows with the list (planning, the snapshot, counting) and the steady state of
the loop (a batch at a time), which is where memory could grow with N.
Run: .venv/bin/python benchmarks/bench_memory.py [--sizes 100000,1000000,10000000] [--db sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DIGEST = ROOT / "digests" / "2026-04-22-open-models-weekly.md"
PG = os.environ.get("NEWSLETTER_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
KEY = "bench-secret-key-" + "k" * 32
SETS = ["", "ai-tech", "ai-research", "essays", "ai-news,essays", "ai-tech,ai-research"]


def populate(url: str, count: int) -> float:
    """`count` active readers in six category sets, written by the database itself; seconds taken."""
    import sqlalchemy as sa

    from newsletter.config import load_settings
    from newsletter.subscribers import Subscribers

    settings = load_settings(ROOT / "newsletter.toml", env={})
    subs = Subscribers.open(url, settings.categories)
    started = time.perf_counter()
    pg = subs.engine.dialect.name == "postgresql"
    numbers = ("SELECT generate_series(1, :n) AS i" if pg else
               "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < :n) SELECT i FROM s")
    token = "md5(i::text || random()::text)" if pg else "lower(hex(randomblob(16)))"
    now = "now()" if pg else "'2026-01-01 00:00:00.000000'"
    with subs.engine.begin() as conn:
        conn.execute(sa.text(
            f"INSERT INTO readers (email, status, token, created_at, status_changed_at, confirmed_at, "
            f"consent_at, consent_method, consent_source) SELECT 'r' || i || '@example' || (i % 89) || '.com', "
            f"'active', {token}, {now}, {now}, {now}, {now}, 'import', 'bench' FROM ({numbers}) AS numbers"),
            {"n": count})
        for n, cats in enumerate(SETS):
            for slug in filter(None, cats.split(",")):
                conn.execute(sa.text("INSERT INTO reader_categories (reader_id, category) SELECT id, :slug "
                                     "FROM readers WHERE id % :sets = :n"), {"slug": slug, "sets": len(SETS), "n": n})
    subs.close()
    return time.perf_counter() - started


def child(args: list[str], env: dict, seconds: float | None) -> dict:
    """Run `newsletter ARGS` in this process; print its figures as JSON (peak memory at the end)."""
    os.environ.update(env)
    from memory import peak_mb

    from newsletter.cli import main

    if seconds:  # a real send of millions: pause it once it has sent a while, as Ctrl-C would
        from newsletter import send

        work = send.Sender.work

        def timed_work(self, run, on_progress=None):
            threading.Timer(seconds, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
            return work(self, run, on_progress)
        send.Sender.work = timed_work
    started = time.perf_counter()
    try:
        code = main(args)
    except SystemExit as e:
        code = e.code
    print(json.dumps({"code": int(code or 0), "seconds": time.perf_counter() - started, "peak": peak_mb()}))
    sys.stdout.flush()
    os._exit(0)  # the timer thread, if it has not fired, must not keep the process alive


def measure(args: list[str], env: dict, seconds: float | None = None) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps([args, env, seconds])],
                         capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise SystemExit(f"the child failed: {out.stderr[-2000:]}")
    figures = json.loads(lines[-1])
    figures["stdout"] = out.stdout
    return figures


def setup_seconds(url: str) -> float:
    """The run's setup alone, as `send` does it: the plan (counts per variant: `plan`, shown before
    the question) and, after it, the snapshot copied into the ledger (`snapshot`, with the copied
    readers counted per variant); `seconds` is both."""
    code = ("import json, sys, time\n"
            "from newsletter.config import load_settings\nfrom newsletter.digest import load_digest\n"
            "from newsletter.ledger import Ledger\nfrom newsletter.send import open_run, plan, prepare_variants\n"
            "from newsletter.subscribers import Subscribers\n"
            f"s = load_settings({str(ROOT / 'newsletter.toml')!r}, env={{}}).with_overrides(database_url=sys.argv[1])\n"
            "subs = Subscribers.open(sys.argv[1], s.categories); d = load_digest(" + repr(str(DIGEST)) + ", s)\n"
            "v = prepare_variants(s, d, plan(d, Ledger(subs.engine)))  # rendered before, as `send` does\n"
            "t = time.perf_counter(); due = plan(d, Ledger(subs.engine)); planned = time.perf_counter()\n"
            "run, due, _ = open_run(Ledger(subs.engine), d, subs, 'outbox', s, again=True, due=due, variants=v)\n"
            "done = time.perf_counter()\n"
            "print(json.dumps({'seconds': done - t, 'plan': planned - t, 'snapshot': done - planned, 'total': due.total}))")
    out = subprocess.run([sys.executable, "-c", code, url], capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def cancel(env: dict, run: int) -> None:
    subprocess.run([sys.executable, "-m", "newsletter", "runs", "cancel", str(run), "--yes"],
                   env=os.environ | env, capture_output=True, cwd=ROOT, check=True)


def database(kind: str, tmp: str):
    """A fresh database of `kind`: (url, cleanup)."""
    if kind == "sqlite":
        path = Path(tmp) / f"{uuid.uuid4().hex[:8]}.db"
        return f"sqlite:///{path}", lambda: [p.unlink(missing_ok=True) for p in path.parent.glob(path.name + "*")]
    import sqlalchemy as sa

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG)
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))

    def drop() -> None:
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()
    return f"{PG}?options=-csearch_path%3D{schema}", drop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--db", default="sqlite,postgresql")
    parser.add_argument("--seconds", type=float, default=15.0, help="how long each real send runs")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*json.loads(args.child))
        return
    sys.path.insert(0, str(ROOT / "tests"))
    from fake_resend import FakeResend

    fake = FakeResend(keep_bodies=False).start()
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for kind in args.db.split(","):
                for size in (int(s) for s in args.sizes.split(",")):
                    url, cleanup = database(kind, tmp)
                    try:
                        filled = populate(url, size)
                        env = {"NEWSLETTER_CONFIG": str(ROOT / "newsletter.toml"), "NEWSLETTER_DATABASE_URL": url,
                               "NEWSLETTER_SECRET_KEY": KEY, "NEWSLETTER_OUTBOX_DIR": str(Path(tmp) / "outbox"),
                               "NEWSLETTER_SEND_RATE": "1000"}
                        dry = measure(["send", str(DIGEST), "--dry-run"], env)
                        setup = setup_seconds(url)
                        cancel(env, 1)
                        outbox = measure(["send", str(DIGEST), "--yes", "--again"], env, args.seconds)
                        resend_env = env | {"NEWSLETTER_PROVIDER": "resend", "RESEND_API_KEY": fake.state.api_key,
                                            "RESEND_API_URL": fake.url}
                        cancel(env, 2)
                        resend = measure(["send", str(DIGEST), "--yes", "--again"], resend_env, args.seconds)
                    finally:
                        cleanup()
                        for eml in (Path(tmp) / "outbox").glob("*.eml"):
                            eml.unlink()
                    rows.append((kind, size, filled, setup, dry, outbox, resend))
                    print(f"{kind:10} {size:>10,} readers (written in {filled:.0f} s): setup "
                          f"{setup['seconds']:.2f} s (plan {setup['plan']:.2f} s, snapshot {setup['snapshot']:.2f} s); peak MB: dry run {dry['peak']:.0f}, outbox {outbox['peak']:.0f}, "
                          f"fake Resend {resend['peak']:.0f}", flush=True)
    finally:
        fake.stop()
    worst = max(max(d["peak"], o["peak"], r["peak"]) for *_, d, o, r in rows)
    print(f"highest peak: {worst:.0f} MB (goal at most 120 MB at every size)")
    for kind in sorted({r[0] for r in rows}):
        mine = [r for r in rows if r[0] == kind]
        if len(mine) > 1:
            small, large = mine[0], mine[-1]
            growth = max(large[4]["peak"], large[5]["peak"], large[6]["peak"]) - \
                max(small[4]["peak"], small[5]["peak"], small[6]["peak"])
            print(f"{kind}: {small[1]:,} -> {large[1]:,} readers: peak grows by {growth:.0f} MB")
        for r in mine:
            if r[1] == 1_000_000:
                print(f"{kind}: setup of 1,000,000 readers: the snapshot into the ledger {r[3]['snapshot']:.2f} s "
                      f"(goal at most 5 s on SQLite), {r[3]['seconds']:.2f} s with the plan before it")


if __name__ == "__main__":
    main()
