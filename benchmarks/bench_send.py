"""Sending: (a) 100,000 readers to the fake Resend server with no rate limit, end to end;
(b) the same engine against a fake that allows 5 requests per second; (c) per-reader
personalization against a full render per reader.

Goals: (a) at least 10,000 emails per second; (b) at least 95% of the allowed rate, nothing lost
to 429s; (c) at most 20 microseconds per reader. The fake server runs in a process of its own.
Run: scripts/bench.sh, or .venv/bin/python benchmarks/bench_send.py [--readers N] [--limited N]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from memory import peak_mb

ROOT = Path(__file__).resolve().parent.parent
DIGEST = ROOT / "digests" / "2026-04-22-open-models-weekly.md"
CATEGORY_SETS = [(), ("ai-tech",), ("ai-research",), ("essays",), ("ai-news", "essays"), ("ai-tech", "ai-research")]


def populate(db_url: str, count: int) -> None:
    from newsletter.config import load_settings
    from newsletter.store import insert_many, reader_categories, readers, utcnow
    from newsletter.subscribers import Subscribers, new_token

    settings = load_settings(ROOT / "newsletter.toml", env={})
    subs = Subscribers.open(db_url, settings.categories)
    rng, now = random.Random(5), utcnow()
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


def populate_apart(db_url: str, count: int) -> None:
    """`populate` in a process of its own, so this one stays small and the measurements clean."""
    subprocess.run([sys.executable, __file__, "--populate", db_url, str(count)], check=True)


def start_fake(rate: float | None, parse: bool = True) -> tuple[subprocess.Popen, str]:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    args = [sys.executable, str(ROOT / "tests" / "fake_resend.py"), "--port", str(port)]
    if rate:
        args += ["--rate", str(rate)]
    if not parse:
        args += ["--no-parse"]
    fake = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    fake.stdout.readline()  # "fake Resend on ..."
    return fake, f"http://127.0.0.1:{port}"


def stats(url: str) -> dict:
    with urllib.request.urlopen(url + "/_stats", timeout=10) as response:
        return json.loads(response.read())


def child_send(db_url: str, api_url: str, rate: str) -> None:
    """One send, end to end, as `newsletter send --yes` does it; prints its figures as JSON."""
    os.environ.update(RESEND_API_KEY="re_test_key", RESEND_API_URL=api_url)
    from newsletter.config import load_settings
    from newsletter.digest import load_digest
    from newsletter.ledger import Ledger
    from newsletter.providers import make_provider
    from newsletter.send import Composer, Sender, open_run, plan, prepare_variants
    from newsletter.subscribers import Subscribers

    settings = load_settings(ROOT / "newsletter.toml", env={}).with_overrides(
        database_url=db_url, provider="resend", send_rate=float(rate))
    subs = Subscribers.open(db_url, settings.categories)
    started = time.perf_counter()
    digest = load_digest(DIGEST, settings)
    ledger = Ledger(subs.engine)
    due = plan(digest, ledger)  # as `send` does: plan, render, then the run, keeping its variants
    planned = time.perf_counter()
    variants = prepare_variants(settings, digest, due)
    rendered = time.perf_counter()
    run, due, variants = open_run(ledger, digest, subs, "resend", settings, due=due, variants=variants)
    provider = make_provider(settings)
    in_provider = [0.0]
    starts: list[float] = []
    real_send = provider.send

    def timed_send(messages, key):  # time inside the SDK call: encoding, HTTP, the fake's work
        start = time.perf_counter()
        starts.append(start)
        try:
            return real_send(messages, key)
        finally:
            in_provider[0] += time.perf_counter() - start
    provider.send = timed_send
    sender = Sender(ledger, provider, Composer(settings, digest.slug, variants), rate=settings.send_rate)
    sending = time.perf_counter()
    progress = {}
    run = sender.send(run, on_progress=lambda p: progress.update(requests=p.requests, retries=p.retries))
    done = time.perf_counter()
    print(json.dumps({"seconds": done - started, "plan": planned - started + sending - rendered, "render": rendered - planned,
                      "send": done - sending, "provider": in_provider[0],
                      "request_rate": (len(starts) - 1) / (starts[-1] - starts[0]) if len(starts) > 1 else 0.0, "status": run.status.value, "counts": ledger.counts(run.id),
                      "variants": len(variants), "peak": peak_mb(),
                      "bytes_per_email": statistics.mean(v.size for v in variants.values()), **progress}))


def measure(db_url: str, api_url: str, rate: float) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", db_url, api_url, str(rate)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def bench_personalize() -> None:
    from newsletter.config import load_settings
    from newsletter.digest import load_digest
    from newsletter.ledger import Recipient
    from newsletter.render import Renderer
    from newsletter.send import Composer, render_variants

    settings = load_settings(ROOT / "newsletter.toml", env={})
    digest = load_digest(DIGEST, settings)
    renderer = Renderer(settings)
    variants = render_variants(renderer, digest, ["all", "ai-tech"])
    composer = Composer(settings, digest.slug, variants)
    recipients = [Recipient(i, f"r{i}@example.com", None, f"tok{i:040d}", "all") for i in range(20_000)]
    rounds = []
    for _ in range(5):
        start = time.perf_counter()
        for r in recipients:
            composer.message(f"r1-{r.delivery_id}", r)
        rounds.append((time.perf_counter() - start) / len(recipients) * 1e6)
    renders = []
    for _ in range(10):
        start = time.perf_counter()
        renderer.render(digest)
        renders.append((time.perf_counter() - start) * 1e6)
    per_reader, full = statistics.median(rounds), statistics.median(renders)
    print(f"(c) personalization: {per_reader:.1f} us per reader (goal at most 20 us; HTML "
          f"{variants['all'].size / 1024:.0f} KB, text and headers included) vs a full render per reader "
          f"{full:,.0f} us: {full / per_reader:,.0f}x less work")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readers", type=int, default=100_000)
    parser.add_argument("--limited", type=int, default=5_000, help="readers for the rate-limited run (b)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--populate", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_send(*args.child)
        return
    if args.populate:
        populate(args.populate[0], int(args.populate[1]))
        return
    with tempfile.TemporaryDirectory() as tmp:
        db_url = f"sqlite:///{tmp}/a.db"
        populate_apart(db_url, args.readers)
        fake, url = start_fake(None)
        try:
            a = measure(db_url, url, 1e6)
            seen = stats(url)
        finally:
            fake.terminate()
        sent = a["counts"]["sent"]
        print(f"(a) {args.readers:,} readers, {a['variants']} variants, SQLite, fake Resend without a limit: "
              f"{sent / a['seconds']:,.0f} emails/s end to end (goal at least 10,000), "
              f"{a['seconds']:.1f} s = plan and snapshot {a['plan']:.1f} s + render {a['render']:.2f} s "
              f"+ send {a['send']:.1f} s ({sent / a['send']:,.0f} emails/s); peak memory {a['peak']:.0f} MB; "
              f"at the fake: {seen['deliveries']:,} deliveries to {seen['addresses']:,} addresses, "
              f"{seen['duplicates']} duplicates")
        own = a["seconds"] - a["provider"]
        print(f"    of which inside the resend SDK call (JSON encoding, HTTP, the fake decoding "
              f"{a['bytes_per_email'] / 1024:.0f} KB per email): {a['provider']:.1f} s; the engine's own work "
              f"(snapshot, ledger, rendering, personalizing): {own:.1f} s = {sent / own:,.0f} emails/s")

        db_url = f"sqlite:///{tmp}/a2.db"  # the ceiling: a server that answers without decoding
        populate_apart(db_url, args.readers)
        fake, url = start_fake(None, parse=False)
        try:
            c = measure(db_url, url, 1e6)
        finally:
            fake.terminate()
        print(f"    the same against a server that answers without decoding the requests: "
              f"{c['counts']['sent'] / c['seconds']:,.0f} emails/s end to end, {c['provider']:.1f} s inside the "
              f"SDK call: what JSON over HTTP through the SDK allows this client on this machine")

        db_url = f"sqlite:///{tmp}/b.db"
        populate_apart(db_url, args.limited)
        fake, url = start_fake(5)
        try:
            b = measure(db_url, url, 5)
            seen = stats(url)
        finally:
            fake.terminate()
        achieved = b["request_rate"]  # requests started per second, first to last
        refused = seen["requests"].get("429", 0)
        print(f"(b) {args.limited:,} readers against a limit of 5 requests/s: {achieved:.2f} requests/s = "
              f"{achieved / 5:.0%} of the limit (goal at least 95%), {b['counts']['sent'] / b['send']:,.0f} "
              f"emails/s; 429 answers: {refused}; delivered {seen['deliveries']:,} to {seen['addresses']:,} "
              f"addresses, {seen['duplicates']} duplicates, run {b['status']}")
    bench_personalize()


if __name__ == "__main__":
    main()
