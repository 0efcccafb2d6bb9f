"""One-click unsubscribes (RFC 8058 POSTs) and Resend's webhooks against a real `newsletter serve`,
on SQLite and PostgreSQL.

Each one-click request unsubscribes a different active reader (a write: the status and an event), as a
mailbox provider's unsubscribe service would call us. Each webhook is a signed `email.delivered`
event about a different email of a sent issue (a signature check, a look-up by message id and a
write), as Resend calls us after a send, thousands at a time. Clients keep their connections open and send
as fast as the server answers, from a process of their own so the client and the server do not
share one interpreter lock. Prints requests per second and p50/p99 latency, with one server
process and with two (`--workers 2`); the goal is 300 requests/s with p99 under 100 ms on a
2-core machine. 12 clients saturate it: more only lengthen the queue.

Run: scripts/bench.sh, or .venv/bin/python benchmarks/bench_web.py [--requests 3000] [--clients 12]
[--workers 1 2] [--what one-click webhooks]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import queue
import re
import signal
import socket
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
WEBHOOK_SECRET = "whsec_YmVuY2gtd2ViaG9vay1zZWNyZXQtMzItYnl0ZXMh"


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


def one_click_requests(url: str, n: int, host: str) -> list[bytes]:
    return [(f"POST /u/{token} HTTP/1.1\r\nHost: {host}\r\n"
             f"Content-Type: application/x-www-form-urlencoded\r\n"
             f"Content-Length: {len(BODY)}\r\n\r\n").encode() + BODY for token in make_readers(url, n)]


def webhook_requests(url: str, n: int, host: str) -> list[bytes]:
    """A sent issue's `n` deliveries, and a signed `email.delivered` event about each."""
    from newsletter.store import deliveries, send_runs
    from newsletter.web.webhooks import sign

    make_readers(url, n)
    engine = sa.create_engine(url)
    now = utcnow()
    with engine.begin() as conn:
        run_id = conn.execute(sa.insert(send_runs).values(
            issue="bench.md", digest_path="bench.md", digest_sha256="0" * 64, subject="Bench", provider="resend",
            status="finished", created_at=now, updated_at=now, finished_at=now)).inserted_primary_key[0]
        ids = conn.execute(sa.select(readers.c.id).order_by(readers.c.id)).scalars().all()
        insert_many(conn, deliveries, [{"run_id": run_id, "reader_id": i, "variant": "", "state": "sent",
                                        "message_id": f"re_bench_{i}", "attempts": 1, "updated_at": now}
                                       for i in ids])
    engine.dispose()
    out = []
    for i in ids:
        body = ('{"type":"email.delivered","created_at":"2026-12-04T08:00:00.000Z","data":{"email_id":'
                f'"re_bench_{i}","to":["bench{i}@example.com"],"subject":"Bench"}}}}')
        head = "".join(f"{k}: {v}\r\n" for k, v in sign(WEBHOOK_SECRET, f"msg_bench_{i}", body).items())
        out.append((f"POST /webhooks/resend HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                    f"{head}Content-Length: {len(body)}\r\n\r\n{body}").encode())
    return out


def start_server(url: str, threads: int, workers: int = 1) -> tuple[subprocess.Popen, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env |= {"NEWSLETTER_CONFIG": str(ROOT / "newsletter.toml"), "NEWSLETTER_DATABASE_URL": url,
            "NEWSLETTER_SECRET_KEY": KEY, "RESEND_WEBHOOK_SECRET": WEBHOOK_SECRET}
    process = subprocess.Popen([sys.executable, "-m", "newsletter", "serve", "--port", "0",
                                "--threads", str(threads), "--workers", str(workers)], env=env, cwd=ROOT,
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


def client(base: str, requests: list[bytes], out) -> None:
    """Send each request over one kept-alive connection; put the latencies (s).

    A bare socket with the request bytes made in advance: the client spends as little of the
    machine's two cores as it can, so the figures are the server's."""
    parts = urlsplit(base)
    conn = socket.create_connection((parts.hostname, parts.port), timeout=30)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    times, errors = [], 0
    for request in requests:
        start = time.perf_counter()
        conn.sendall(request)
        status = read_answer(conn)
        times.append(time.perf_counter() - start)
        errors += status != 200
    conn.close()
    out.put((times, errors))


def read_answer(conn: socket.socket) -> int:
    """Read one HTTP answer (with a Content-Length) whole; its status code."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head).group(1))
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        body += chunk
    return int(head.split(b" ", 2)[1])


def clients_process(base: str, tokens: list[bytes], threads: int, out: multiprocessing.Queue) -> None:
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


def run(url: str, label: str, n: int, clients: int, threads: int, workers: int, what: str) -> None:
    tokens = (webhook_requests if what == "webhooks" else one_click_requests)(url, n, "127.0.0.1")
    process, base = start_server(url, threads, workers)
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
    print(f"{label:<11} {len(times)} {'signed webhooks' if what == 'webhooks' else 'one-click POSTs'}, {clients} clients, {workers} x {threads} server threads: "
          f"{len(times) / elapsed:.0f} requests/s, p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
          f"{errors} not 200")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--clients", type=int, default=12)
    parser.add_argument("--threads", type=int, default=4, help="newsletter serve --threads")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                        help="newsletter serve --workers: each number is one run per database")
    parser.add_argument("--what", nargs="+", default=["one-click", "webhooks"], choices=["one-click", "webhooks"])
    args = parser.parse_args()
    for what, workers in [(what, workers) for what in args.what for workers in args.workers]:
        with tempfile.TemporaryDirectory() as folder:
            run(f"sqlite:///{Path(folder) / 'subscribers.db'}", "SQLite", args.requests + 50, args.clients,
                args.threads, workers, what)
        schema = f"bench_{uuid.uuid4().hex[:10]}"
        admin = sa.create_engine(PG_URL)
        with admin.begin() as conn:
            conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
        try:
            run(f"{PG_URL}?options=-csearch_path%3D{schema}", "PostgreSQL", args.requests + 50, args.clients,
                args.threads, workers, what)
        finally:
            with admin.begin() as conn:
                conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
            admin.dispose()


if __name__ == "__main__":
    main()
