"""Import generated Mailchimp exports into a fresh SQLite database and a fresh PostgreSQL schema:
time and peak memory at each size, then the same file again.

Goals: 100,000 rows in under 5 s on SQLite; peak memory at most 120 MB at every size, on both
databases: flat in the size of the file. Sizes: 100,000 and 1,000,000 rows unless --rows says
otherwise (--rows 100000,1000000,10000000: the largest file is 1.7 GB, and its four imports take
over an hour).
Run: scripts/bench.sh, or .venv/bin/python benchmarks/bench_import.py [--rows N,N] [--databases sqlite]
Each measurement runs in a child process of its own, so its peak memory is its own.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from memory import peak_mb

ROOT = Path(__file__).resolve().parent.parent
TAGS = ["AI Tech", "AI Research", "AI News", "Essays", "Book Club"]
PG_URL = os.environ.get("NEWSLETTER_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
DATABASES = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}
GOAL_MB = 120


def generate(path: Path, rows: int) -> None:
    """A Mailchimp-shaped export: names, tags, opt-in times and IPs, a few bad rows, and one address
    in every 10,000 twice, 8,000 lines apart (in another chunk of the import)."""
    rng = random.Random(7)
    remembered = ""
    with path.open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["Email Address", "First Name", "Last Name", "MEMBER_RATING", "OPTIN_TIME", "OPTIN_IP",
                      "CONFIRM_TIME", "CONFIRM_IP", "LEID", "EUID", "TAGS"])
        for i in range(rows):
            email = f"reader{i}.{rng.choice(['x', 'news', 'mail'])}@{rng.choice(['example.com', 'example.org', 'mail.example.net', 'exämple.de'])}"
            if i % 997 == 0:
                email = f"broken-{i}"  # invalid
            if i % 1499 == 0:
                email = email.upper()  # one reader whatever the case
            if i % 10_000 == 1:
                remembered = email
            elif i % 10_000 == 8_001:
                email = remembered  # counted once
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


@dataclass
class Measured:
    seconds: float
    peak_mb: float
    summary: str  # the summary's counts line


def measure(csv_path: Path, db_url: str, forgotten: int) -> Measured:
    out = subprocess.run([sys.executable, __file__, "--child", str(csv_path), db_url, str(forgotten)],
                         check=True, capture_output=True, text=True).stdout.strip()
    seconds, _open_seconds, peak, line = out.split("|", 3)
    return Measured(float(seconds), float(peak), line)


@contextlib.contextmanager
def fresh_database(kind: str, folder: Path) -> Iterator[str]:
    """The URL of an empty database: an SQLite file in `folder`, or a PostgreSQL schema of its own."""
    if kind == "sqlite":
        path = folder / "subscribers.db"
        yield f"sqlite:///{path}"
        for leftover in folder.glob("subscribers.db*"):  # with its WAL
            leftover.unlink()
        return
    import sqlalchemy as sa

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def postgresql_reachable() -> bool:
    import sqlalchemy as sa

    engine = sa.create_engine(PG_URL)
    try:
        with engine.connect():
            return True
    except sa.exc.OperationalError as e:
        print(f"PostgreSQL at {PG_URL} is not reachable ({str(e.orig).strip().splitlines()[0]}): "
              "skipping it")
        return False
    finally:
        engine.dispose()


def sizes(text: str) -> list[int]:
    try:
        rows = [int(part.replace("_", "")) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of row counts like 100000,1000000") from None
    if not rows or min(rows) < 1:
        raise argparse.ArgumentTypeError("give at least one row count, each at least 1")
    return rows


def verdict(results: list[tuple[int, str, Measured, Measured | None]]) -> str:
    peaks = [(m.peak_mb, rows, DATABASES[db]) for rows, db, first, again in results
             for m in (first, again) if m is not None]
    if not peaks:
        return "nothing was measured"
    low, high = min(peaks)[0], max(peaks)[0]
    over = [f"{peak:.0f} MB at {rows:,} rows on {db}" for peak, rows, db in peaks if peak > GOAL_MB]
    if over:
        return f"peak memory NOT within the goal of {GOAL_MB} MB: {'; '.join(over)}"
    return (f"peak memory {low:.0f}-{high:.0f} MB at every size and database, within the goal of "
            f"{GOAL_MB} MB: flat in the size of the file")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=sizes, default=[100_000, 1_000_000],
                        help="sizes of the files, comma-separated (default: 100000,1000000)")
    parser.add_argument("--databases", type=lambda t: [d.strip() for d in t.split(",")], default=list(DATABASES),
                        help="sqlite, postgresql or both (default: sqlite,postgresql)")
    parser.add_argument("--again", action=argparse.BooleanOptionalAction, default=True,
                        help="import each file a second time, when nothing is left to change (default: yes)")
    parser.add_argument("--forgotten", type=int, default=0,
                        help="forgotten addresses of each kind (keyed, and older unkeyed hashes) stored beforehand")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return
    unknown = [d for d in args.databases if d not in DATABASES]
    if unknown:
        parser.error(f"unknown database {unknown[0]!r} (choose from {', '.join(DATABASES)})")
    databases = [d for d in args.databases if d != "postgresql" or postgresql_reachable()]
    if args.forgotten:
        print(f"{2 * args.forgotten:,} forgotten addresses stored before each import")
    print(f"{'rows':>11}  {'database':<10}  {'import s':>8}  {'rows/s':>7}  {'peak MB':>7}"
          + (f"  {'again s':>7}  {'peak MB':>7}" if args.again else ""))
    results = []
    for rows in args.rows:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            csv_path = folder / "export.csv"
            generate(csv_path, rows)
            size_mb = csv_path.stat().st_size / 1e6
            for db in databases:
                with fresh_database(db, folder) as url:
                    first = measure(csv_path, url, args.forgotten)
                    again = measure(csv_path, url, args.forgotten) if args.again else None
                results.append((rows, db, first, again))
                print(f"{rows:>11,}  {DATABASES[db]:<10}  {first.seconds:>8.1f}  {rows / first.seconds:>7,.0f}  "
                      f"{first.peak_mb:>7.0f}" + (f"  {again.seconds:>7.1f}  {again.peak_mb:>7.0f}" if again else ""),
                      flush=True)
            if databases:
                print(f"{'':>11}  a {size_mb:,.0f} MB file; {first.summary}"
                      + (f"; again: {again.summary}" if again else ""), flush=True)
    print(verdict(results))
    if 100_000 in args.rows and "sqlite" in databases:
        first = next(f for rows, db, f, _ in results if rows == 100_000 and db == "sqlite")
        print(f"100,000 rows into SQLite: {first.seconds:.2f} s (goal: under 5 s)")


if __name__ == "__main__":
    main()
