"""Render the long example digest: median milliseconds per stage and per variant, the whole pipeline
from the Markdown file to the inlined HTML and text, and the HTML size.

Where `node` and the official `mjml` package are installed (scripts/test.sh installs it into
tools/mjml), the same MJML is also compiled by MJML's own JavaScript compiler, warm, in a node
process of its own, and the ratio of our whole pipeline to that compile is printed.
Goal: the whole pipeline within 2x of the official compile alone.
Run: scripts/bench.sh, or .venv/bin/python benchmarks/bench_render.py

Measured in December 2026 on a shared 2-core machine, main and the render speed work run alternately
in one session (medians of 9 runs each, --repeat 30):

    stage                                   main     now    what changed
    parse (load_digest)                     8.2 ms   6.6    placeholder check skips lines that
                                                            cannot hold one (1.1 -> 0.13 ms); a plain
                                                            [^label] is read before the link rule
                                                            scans it (markdown-it 3.9 -> 3.6 ms); no
                                                            nesting count for fragments with fewer
                                                            tags than the limit
    inline, every story                     4.9 ms   1.4    newsletter/inliner.py: rules sorted and
                                                            split once, selectors matched from one
                                                            index instead of an XPath per rule over
                                                            the email, merged styles and image floats
                                                            kept per distinct input
    render, every story (all stages)       10.0 ms   6.0    the above; check_whole's anchor search
                                                            0.6 -> 0.17 ms
    whole pipeline, file to HTML and text  19.5 ms  13.5
    ratio to the official compile          5.4x     3.9x   on the quieter runs (official 3.2-4.4 ms)

A later, quieter session (3 runs each, official 2.8-3.2 ms): whole pipeline 16.7 -> 10.8 ms, ratio
5.5x -> 3.8x; parse 6.9 -> 5.5 ms, inline 4.2 -> 1.25 ms.

The official compile is the noisiest figure (3 to 8 ms within one busy session): compare ratios
within one run. With it warmed 50 times, three quiet runs gave 12.3-13.0 ms against 2.7-2.8 ms, 4.5x.
Then the plain-text part's wrapping moved from a Jinja loop into Python (3.3 -> 1.2 ms); on a slower
day, four runs: whole pipeline 13.7-14.6 ms, official 3.5-5.8 ms, ratio 2.5-4.2x; the libraries'
calls alone (printed: markdown-it's parse 4.4, Jinja 0.75, MRML 0.67, lxml 1.2 ms) 1.2-2.3x of the
official compile. The goal is not reached: at 2x, our own work (about 7 ms) would have to fit in
between nothing and 2 ms. tests/test_render_golden.py pins the output byte for byte.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import time
from pathlib import Path

from lxml import etree

from newsletter.config import load_settings
from newsletter.digest import load_digest
from newsletter.digest.markdown import MD
from newsletter.digest.parse import read_source
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


# Compiles the MJML on stdin `repeat` times after a warm-up; prints the median milliseconds.
NODE_BENCH = """
const mjml = require(process.argv[1]);
const source = require("fs").readFileSync(0, "utf8");
const repeat = Number(process.argv[2]);
for (let i = 0; i < 50; i++) mjml(source, {validationLevel: "skip"});  // V8 settles after a few dozen
const times = [];
for (let i = 0; i < repeat; i++) {
  const start = process.hrtime.bigint();
  mjml(source, {validationLevel: "skip"});
  times.push(Number(process.hrtime.bigint() - start) / 1e6);
}
times.sort((a, b) => a - b);
console.log(JSON.stringify({ms: times[Math.floor(times.length / 2)]}));
"""


def official_mjml() -> Path | None:
    """The official mjml package, where installed (tools/mjml, as scripts/test.sh puts it)."""
    found = ROOT / "tools" / "mjml" / "node_modules" / "mjml"
    return found if found.is_dir() and shutil.which("node") else None


def official_compile_ms(source: str, repeat: int) -> float | None:
    package = official_mjml()
    if package is None:
        return None
    done = subprocess.run(["node", "-e", NODE_BENCH, str(package), str(max(repeat, 10))], input=source,
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        print(f"official mjml failed: {done.stderr.strip().splitlines()[-1:]}")
        return None
    return json.loads(done.stdout)["ms"]


def library_floor_ms(renderer: Renderer, digest, repeat: int) -> tuple[float, str]:
    """The time of the calls into markdown-it, Jinja, MRML and lxml that rendering the full email
    makes, with none of our own work around them: what no change to our code can take away."""
    source = read_source(DIGEST)
    body = "\n".join(source.lines[source.body_start:])
    mjml_source = renderer.mjml(select(digest, None))
    compiled = renderer.compile(mjml_source)
    template = renderer.env.get_template("email/digest.mjml")
    context = renderer.context(select(digest, None), html=True)
    calls = {
        "markdown-it parse": lambda: MD.parse(body, {}),
        "Jinja MJML template": lambda: template.render(context),
        "MRML compile": lambda: renderer.compile(mjml_source),
        "lxml read and write": lambda: etree.tostring(etree.fromstring(compiled, etree.HTMLParser()),
                                                      method="html", encoding="utf-8"),
    }
    times = {name: median_ms(call, repeat)[0] for name, call in calls.items()}
    return sum(times.values()), ", ".join(f"{name} {ms:.2f}" for name, ms in times.items())


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
    whole_ms, full = median_ms(lambda: renderer.render(load_digest(DIGEST, settings)), args.repeat)
    print(f"whole pipeline, Markdown file to HTML and text, every story: {whole_ms:.2f} ms")
    floor_ms, parts = library_floor_ms(renderer, digest, args.repeat)
    print(f"of which the libraries' own calls, the least any pipeline on them costs: {floor_ms:.2f} ms "
          f"({parts})")
    official = official_compile_ms(renderer.mjml(select(digest, None)), args.repeat)
    if official is None:
        print("official MJML compiler: not installed (scripts/test.sh installs it into tools/mjml); no ratio")
    else:
        print(f"official MJML compiler (node, warm), the same MJML: {official:.2f} ms; "
              f"whole pipeline / official compile = {whole_ms / official:.2f}x (goal: at most 2x); "
              f"the libraries' calls alone = {floor_ms / official:.2f}x")
    print(f"full email: {full.size / 1024:.1f} KB HTML (limit 70 KB; Gmail clips at ~102 KB), "
          f"{len(full.text.encode()) / 1024:.1f} KB text")


if __name__ == "__main__":
    main()
