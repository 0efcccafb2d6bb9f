"""List a million readers as CSV (`newsletter subscribers list --format csv`): time and peak memory.

Goal: memory flat and under 150 MB. The same listing of a tenth as many readers runs first, so the
two peaks can be compared in one run. Run: scripts/bench.sh, or .venv/bin/python benchmarks/bench_list.py
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa
from memory import peak_mb

ROOT = Path(__file__).resolve().parent.parent
SLUGS = ["ai-tech", "ai-research", "ai-news", "essays"]


def populate(db_url: str, readers: int) -> None:
    """Fill a fresh database through the store's own schema and bulk insert."""
    from newsletter.config import load_settings
    from newsletter.store import insert_many, reader_categories, readers as readers_table, utcnow
    from newsletter.subscribers import Subscribers, new_token

    settings = load_settings(ROOT / "newsletter.toml", env={})
    subs = Subscribers.open(db_url, settings.categories)
    rng = random.Random(3)
    now = utcnow()
    step = 50_000
    with subs.engine.begin() as conn:
        for start in range(0, readers, step):
            rows = [{"email": f"reader{i}@example{i % 97}.com", "name": f"Reader {i}",
                     "status": "active" if i % 10 else "unsubscribed", "token": new_token(),
                     "created_at": now, "status_changed_at": now, "confirmed_at": now,
                     "consent_at": now, "consent_method": "import", "consent_ip": None,
                     "consent_source": "bench"} for i in range(start, min(start + step, readers))]
            insert_many(conn, readers_table, rows)
            first = conn.execute(sa.select(sa.func.min(readers_table.c.id)).where(
                readers_table.c.email == rows[0]["email"])).scalar()
            insert_many(conn, reader_categories, [
                {"reader_id": first + n, "category": slug} for n in range(len(rows))
                for slug in rng.sample(SLUGS, rng.randint(0, 2))])
    subs.close()


def list_csv(db_url: str) -> tuple[float, float, int]:
    """Run the real command; return seconds, its peak memory in MB (polled from /proc while it
    runs, so a last burst before exit could be missed), and the bytes it printed."""
    env = dict(os.environ, NEWSLETTER_DATABASE_URL=db_url)
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "newsletter", "--config", str(ROOT / "newsletter.toml"),
                                "subscribers", "list", "--format", "csv"], stdout=subprocess.PIPE, env=env)
    size, peak = 0, 0.0
    while chunk := process.stdout.read(1 << 16):
        size += len(chunk)
        try:  # the command's own high-water mark; it only grows, so the last reading is its peak
            peak = peak_mb(process.pid)
        except (OSError, RuntimeError):
            pass
    if process.wait():
        raise SystemExit(f"the list command failed with status {process.returncode}")
    return time.perf_counter() - start, peak, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readers", type=int, default=1_000_000)
    parser.add_argument("--populate", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.populate:
        populate(args.populate[0], int(args.populate[1]))
        return
    with tempfile.TemporaryDirectory() as tmp:
        results = []
        for count in (args.readers // 10, args.readers):
            db_url = f"sqlite:///{tmp}/list-{count}.db"
            start = time.perf_counter()
            subprocess.run([sys.executable, __file__, "--populate", db_url, str(count)], check=True)
            made = time.perf_counter() - start
            seconds, peak, size = list_csv(db_url)
            results.append(peak)
            print(f"{count:>9,} readers (database made in {made:.1f} s): listed in {seconds:.1f} s "
                  f"({count / seconds:,.0f} readers/s), {size / 1e6:.0f} MB of CSV, peak memory {peak:.0f} MB")
        print(f"peak memory at {args.readers:,} readers is {results[1] / results[0]:.2f}x that at "
              f"{args.readers // 10:,} (flat: about 1x; goal under 150 MB)")


if __name__ == "__main__":
    main()
