"""One-click unsubscribes (RFC 8058 POSTs) against a real `newsletter serve`, on SQLite and PostgreSQL.

Each request unsubscribes a different active reader (a write: the status and an event), as a
mailbox provider's unsubscribe service would call us. Clients keep their connections open and send
as fast as the server answers, from a process of their own so the client and the server do not
share one interpreter lock. Prints requests per second and p50/p99 latency; the goal is 300
requests/s with p99 under 100 ms on a 2-core machine.

Run: scripts/bench.sh, or .venv/bin/python benchmarks/bench_web.py [--requests 3000] [--clients 16]
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import os
import queue
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from newsletter.config import load_settings  # noqa: E402
from newsletter.store import insert_many, readers  # noqa: E402
from newsletter.subscribers import Consent, ConsentMethod, Status, Subscribers, new_reader_row  # noqa: E402
from newsletter.store import utcnow  # noqa: E402

PG_URL = os.environ.get("NEWSLETTER_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
KEY = "bench-secret-key-" + "b" * 32
BODY = b"List-Unsubscribe=One-Click"


def make_readers(url: str, n: int) -> list[str]:
    """`n` active readers; their tokens."""
    settings = load_settings(ROOT / "newsletter.toml", env={})
    subs = Subscribers.open(url, settings.categories, secret_key=KEY.encode())
    now = utcnow()
    rows = [new_reader_row(f"bench{i}@example.com", name=None, status=Status.ACTIVE,
                           consent=Consent(ConsentMethod.CLI), now=now) for i in range(n)]
    with subs.engine.begin() as conn:
        insert_many(conn, readers, rows)
    subs.close()
    return [row["token"] for row in rows]


def start_server(url: str, threads: int) -> tuple[subprocess.Popen, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env |= {"NEWSLETTER_CONFIG": str(ROOT / "newsletter.toml"), "NEWSLETTER_DATABASE_URL": url,
            "NEWSLETTER_SECRET_KEY": KEY}
    process = subprocess.Popen([sys.executable, "-m", "newsletter", "serve", "--port", "0",
                                "--threads", str(threads)], env=env, cwd=ROOT,
                               stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    found: queue.Queue = queue.Queue()

    def read() -> None:
        for line in process.stderr:
            if m := re.search(r"on (http://127\.0\.0\.1:\d+)", line):
                found.put(m.group(1))
        found.put(None)

    threading.Thread(target=read, daemon=True).start()
    base = found.get(timeout=60)
    if base is None:
        raise SystemExit("newsletter serve did not start")
    return process, base


def client(base: str, tokens: list[str], out: multiprocessing.Queue) -> None:
    """POST one-click for each token over one kept-alive connection; put the latencies (s)."""
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    times, errors = [], 0
    for token in tokens:
        start = time.perf_counter()
        conn.request("POST", f"/u/{token}", body=BODY,
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
        answer = conn.getresponse()
        answer.read()
        times.append(time.perf_counter() - start)
        errors += answer.status != 200
    conn.close()
    out.put((times, errors))


def clients_process(base: str, tokens: list[str], threads: int, out: multiprocessing.Queue) -> None:
    inner: queue.Queue = queue.Queue()

    class Relay:
        put = inner.put

    workers = [threading.Thread(target=client, args=(base, tokens[i::threads], Relay)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    times, errors = [], 0
    while not inner.empty():
        t, e = inner.get()
        times += t
        errors += e
    out.put((times, errors))


def run(url: str, label: str, n: int, clients: int, threads: int) -> None:
    tokens = make_readers(url, n)
    process, base = start_server(url, threads)
    try:
        # Warm up: the first requests compile templates and open connections.
        warm = multiprocessing.Queue()
        client(base, tokens[:50], warm)
        work = tokens[50:]
        out: multiprocessing.Queue = multiprocessing.Queue()
        procs = [multiprocessing.Process(target=clients_process, args=(base, work[i::2], clients // 2, out))
                 for i in range(2)]
        start = time.perf_counter()
        for p in procs:
            p.start()
        results = [out.get(timeout=600) for _ in procs]
        elapsed = time.perf_counter() - start
        for p in procs:
            p.join()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    times = sorted(t for r in results for t in r[0])
    errors = sum(r[1] for r in results)
    p50 = statistics.median(times) * 1000
    p99 = times[int(len(times) * 0.99) - 1] * 1000
    print(f"{label:<11} {len(times)} one-click POSTs, {clients} clients, {threads} server threads: "
          f"{len(times) / elapsed:.0f} requests/s, p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
          f"{errors} not 200")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--threads", type=int, default=8, help="newsletter serve --threads")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        run(f"sqlite:///{Path(folder) / 'subscribers.db'}", "SQLite", args.requests + 50, args.clients,
            args.threads)
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    try:
        run(f"{PG_URL}?options=-csearch_path%3D{schema}", "PostgreSQL", args.requests + 50, args.clients,
            args.threads)
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


if __name__ == "__main__":
    main()
