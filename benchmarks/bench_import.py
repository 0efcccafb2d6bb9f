"""Import a generated 100,000-row CSV into a fresh SQLite database: time and peak memory.

Goal: under 5 s. Run: scripts/bench.sh, or .venv/bin/python benchmarks/bench_import.py [--rows N]
Each measurement runs in a child process of its own, so its peak memory is its own.
"""

from __future__ import annotations

import argparse
import csv
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from memory import peak_mb

ROOT = Path(__file__).resolve().parent.parent
TAGS = ["AI Tech", "AI Research", "AI News", "Essays", "Book Club"]


def generate(path: Path, rows: int) -> None:
    """A Mailchimp-shaped export: names, tags, opt-in times and IPs, a few bad and duplicate rows."""
    rng = random.Random(7)
    with path.open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["Email Address", "First Name", "Last Name", "MEMBER_RATING", "OPTIN_TIME", "OPTIN_IP",
                      "CONFIRM_TIME", "CONFIRM_IP", "LEID", "EUID", "TAGS"])
        for i in range(rows):
            email = f"reader{i}.{rng.choice(['x', 'news', 'mail'])}@{rng.choice(['example.com', 'example.org', 'mail.example.net', 'exämple.de'])}"
            if i % 997 == 0:
                email = f"broken-{i}"  # invalid
            if i % 1499 == 0:
                email = email.upper()  # a duplicate of itself only by case: still one reader
            tags = ",".join(f'"{t}"' for t in rng.sample(TAGS, rng.randint(0, 3)))
            out.writerow([email, f"First{i}", f"Last{i}", rng.randint(1, 5), "2024-01-02 03:04:05",
                          f"198.51.100.{i % 250}", "2024-01-02 03:05:06", f"198.51.100.{i % 250}", i,
                          f"{i:010x}", tags])


def child(csv_path: str, db_url: str, forgotten: int) -> None:
    from newsletter.config import load_settings
    from newsletter.imports import import_csv
    from newsletter.store import insert_many, suppressions, utcnow
    from newsletter.subscribers import Subscribers, email_hash, unkeyed_email_hash

    settings = load_settings(ROOT / "newsletter.toml", env={})
    start = time.perf_counter()
    key = b"benchmark-key-" + b"k" * 32
    subs = Subscribers.open(db_url, settings.categories, secret_key=key)
    if forgotten:  # forgotten addresses, keyed and from before the key: every row is checked against both
        with subs.engine.begin() as conn:
            conn.execute(suppressions.delete())
            now = utcnow()
            insert_many(conn, suppressions, [
                {"email_hash": h(f"gone{i}@example.com"), "reason": "forgotten", "created_at": now}
                for i in range(forgotten) for h in (unkeyed_email_hash, lambda a: email_hash(a, key))])
    opened = time.perf_counter()
    summary = import_csv(subs, Path(csv_path))
    done = time.perf_counter()
    peak = peak_mb()
    print(f"{done - opened:.2f}|{opened - start:.2f}|{peak:.0f}|{summary.report_lines()[1]}")


def measure(csv_path: Path, db_url: str, forgotten: int) -> tuple[float, float, float, str]:
    out = subprocess.run([sys.executable, __file__, "--child", str(csv_path), db_url, str(forgotten)],
                         check=True, capture_output=True, text=True).stdout.strip()
    seconds, open_seconds, peak, line = out.split("|", 3)
    return float(seconds), float(open_seconds), float(peak), line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--forgotten", type=int, default=0,
                        help="forgotten addresses of each kind (keyed, and older unkeyed hashes) stored beforehand")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return
    with tempfile.TemporaryDirectory() as tmp:
        csv_path = Path(tmp) / "export.csv"
        generate(csv_path, args.rows)
        db_url = f"sqlite:///{tmp}/subscribers.db"
        print(f"file: {args.rows:,} rows, {csv_path.stat().st_size / 1e6:.1f} MB (Mailchimp format)"
              + (f"; {2 * args.forgotten:,} forgotten addresses stored" if args.forgotten else ""))
        first = measure(csv_path, db_url, args.forgotten)
        print(f"first import into a fresh database: {first[0]:.2f} s "
              f"({args.rows / first[0]:,.0f} rows/s; goal under 5 s), peak memory {first[2]:.0f} MB, "
              f"creating the database {first[1]:.2f} s")
        print(f"  {first[3]}")
        again = measure(csv_path, db_url, args.forgotten)
        print(f"same file again (nothing to change): {again[0]:.2f} s, peak memory {again[2]:.0f} MB")
        print(f"  {again[3]}")


if __name__ == "__main__":
    main()
