"""Render the long example digest: median milliseconds per stage and per variant, and the HTML size.

Goal: the whole pipeline under 13 ms per variant (MJML's own JavaScript compiler takes about that
long for the MJML step alone). Run: scripts/bench.sh, or .venv/bin/python benchmarks/bench_render.py
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from newsletter.config import load_settings
from newsletter.digest import load_digest
from newsletter.render import Renderer, select

ROOT = Path(__file__).resolve().parent.parent
DIGEST = ROOT / "digests" / "2026-04-22-open-models-weekly.md"
VARIANTS = [None, ["ai-research"], ["ai-tech"], ["ai-news"], ["essays"], ["ai-research", "ai-tech"],
            ["ai-news", "essays"], ["ai-research", "ai-tech", "ai-news", "essays"]]


def median_ms(fn, repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30, help="runs per measurement (default 30)")
    args = parser.parse_args()

    settings = load_settings(ROOT / "newsletter.toml", env={})
    renderer = Renderer(settings)
    digest = load_digest(DIGEST, settings)
    renderer.render(digest)  # warm caches: templates, premailer's parsed CSS

    parse_ms, _ = median_ms(lambda: load_digest(DIGEST, settings), args.repeat)
    print(f"digest: {DIGEST.name}, {DIGEST.stat().st_size / 1024:.1f} KB of Markdown, "
          f"{len(digest.footnotes)} notes, {args.repeat} runs per figure")
    print(f"parse (once per send, shared by all variants): {parse_ms:.2f} ms")
    print()
    header = f"{'variant':<38}{'jinja':>8}{'mjml':>8}{'inline':>8}{'text':>8}{'total':>8}{'html KB':>9}"
    print(header)
    print("-" * len(header))
    totals = []
    for categories in VARIANTS:
        variant = select(digest, categories)
        jinja_ms, source = median_ms(lambda: renderer.mjml(select(digest, categories)), args.repeat)
        mjml_ms, compiled = median_ms(lambda: renderer.compile(source), args.repeat)
        inline_ms, html = median_ms(lambda: renderer.inline(compiled), args.repeat)
        text_ms, _ = median_ms(lambda: renderer.text(select(digest, categories)), args.repeat)
        total_ms, email = median_ms(lambda: renderer.render(digest, categories), args.repeat)
        assert email.html == html
        totals.append(total_ms)
        print(f"{variant.key:<38}{jinja_ms:>8.2f}{mjml_ms:>8.2f}{inline_ms:>8.2f}{text_ms:>8.2f}"
              f"{total_ms:>8.2f}{email.size / 1024:>9.1f}")
    print()
    print(f"whole pipeline per variant: median {statistics.median(totals):.2f} ms, "
          f"worst {max(totals):.2f} ms (goal: under 13 ms); "
          f"with parsing shared by {len(VARIANTS)} variants: "
          f"{statistics.median(totals) + parse_ms / len(VARIANTS):.2f} ms")
    full = renderer.render(digest)
    print(f"full email: {full.size / 1024:.1f} KB HTML (limit 70 KB; Gmail clips at ~102 KB), "
          f"{len(full.text.encode()) / 1024:.1f} KB text")


if __name__ == "__main__":
    main()
