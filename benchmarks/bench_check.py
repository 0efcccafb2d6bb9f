"""Check hostile digests of size N and 8N: milliseconds each, and the ratio of the two.

A check whose time is linear in the input shows a ratio near 8; a quadratic one, near 64. The inputs
are the ones that were quadratic once: a long word, a long footnote title, a run of `[^`, a run of
backticks, many undefined notes; and raw HTML, deep nesting and same-titled stories for good
measure. Run: scripts/bench.sh, or .venv/bin/python benchmarks/bench_check.py [--n 10000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from newsletter.config import load_settings
from newsletter.digest import load_digest
from newsletter.errors import DigestError

ROOT = Path(__file__).resolve().parent.parent
BASE = """---
title: A hostile issue
categories: [ai-research]
---

Intro.[^a]

{body}

## Round-ups

### An item
Text.[^a]

[^a]: [{title}](https://a.example.org)
"""
INPUTS = {
    "long word": lambda n: {"body": "x" * (8 * n)},
    "long footnote title": lambda n: {"title": "x" * (8 * n)},
    "run of [^": lambda n: {"body": "[^" * n},
    "run of backticks": lambda n: {"body": "x " + "`" * n + " x"},  # not at the start: a fence
    "undefined notes": lambda n: {"body": " ".join(f"[^u{i}]" for i in range(n // 4))},
    "raw HTML tags": lambda n: {"body": '<span onclick="x()">a</span> ' * (n // 4)},
    "deep <div>s": lambda n: {"body": "<div>" * n},
    "same-titled stories": lambda n: {"body": "## Same\nText.\n\n" * (n // 16)},
}


def check_ms(path: Path, settings, repeat: int) -> tuple[float, str]:
    times, outcome = [], ""
    for _ in range(repeat):
        start = time.perf_counter()
        try:
            digest = load_digest(path, settings)
            outcome = f"ok, {len(digest.warnings)} warnings"
        except DigestError as e:
            outcome = f"{len(e.problems)} errors"
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="the smaller size N (default 10,000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (default 3)")
    args = parser.parse_args()
    settings = load_settings(ROOT / "newsletter.toml", env={})

    header = f"{'input':<22}{'N ms':>10}{'8N ms':>10}{'ratio':>8}   outcome at 8N"
    print(f"N = {args.n:,}; median of {args.repeat} runs; linear ~8, quadratic ~64")
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as folder:
        for name, make in INPUTS.items():
            figures = []
            for size in (args.n, 8 * args.n):
                path = Path(folder) / "hostile.md"
                path.write_text(BASE.format(**{"body": "Text.", "title": "A"} | make(size)), encoding="utf-8")
                figures.append(check_ms(path, settings, args.repeat))
            (small, _), (large, outcome) = figures
            print(f"{name:<22}{small:>10.1f}{large:>10.1f}{large / small:>8.1f}   {outcome}")


if __name__ == "__main__":
    main()
