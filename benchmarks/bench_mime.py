"""Messages for SMTP and the outbox: the email package's generator (`to_mime`, once per reader)
against each variant's template filled in per reader, and the outbox end to end.

N readers over six variants of the example digest, each with their own token and address (one in
ten international). Prints messages per second of the generator (on the first --generator
readers: it is slow), of the template (encoding alone, and with composing the message), their
ratio, and the outbox writing every reader's .eml file.
Goal: at least 3,000 messages per second from the templates.
Run: scripts/bench.sh, or .venv/bin/python benchmarks/bench_mime.py [--readers N] [--generator N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from newsletter.config import load_settings
from newsletter.digest import load_digest
from newsletter.ledger import Recipient
from newsletter.providers.mime import encode, to_mime
from newsletter.providers.outbox import OutboxProvider
from newsletter.render import Renderer
from newsletter.send import Composer, render_variants
from newsletter.subscribers import new_token

ROOT = Path(__file__).resolve().parent.parent
DIGEST = ROOT / "digests" / "2026-04-22-open-models-weekly.md"
VARIANTS = ["all", "ai-tech", "ai-research", "essays", "ai-news+essays", "ai-research+ai-tech"]


def readers(count: int) -> list[Recipient]:
    return [Recipient(i, f"reader{i}@example{i % 89}.com" if i % 10 else f"léa{i}@exämple.org", None,
                      new_token(), VARIANTS[i % len(VARIANTS)]) for i in range(count)]


def rate(count: int, seconds: float) -> str:
    return f"{count / seconds:>9,.0f} messages/s  ({seconds * 1e6 / count:,.0f} us each, {count:,} messages)"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--readers", type=int, default=5_000)
    parser.add_argument("--generator", type=int, default=500, help="readers built by the generator too")
    args = parser.parse_args()

    settings = load_settings(ROOT / "newsletter.toml", env={})
    digest = load_digest(DIGEST, settings)
    variants = render_variants(Renderer(settings), digest, VARIANTS)
    composer = Composer(settings, digest.slug, variants, view_key=b"k" * 32)
    people = readers(args.readers)
    for key in VARIANTS:  # each template is encoded on first use: once per send, not measured
        encode(composer.message("warm", Recipient(0, "warm@example.com", None, "t" * 32, key)))

    # In batches of 100, as a send composes them: 5,000 messages of 100 KB at once would measure
    # the memory they take more than the work.
    composing = template = generator = 0.0
    for first in range(0, len(people), 100):
        start = time.perf_counter()
        messages = [composer.message(f"r1-{r.delivery_id}", r) for r in people[first:first + 100]]
        composing += time.perf_counter() - start
        start = time.perf_counter()
        for message in messages:
            encode(message)
        template += time.perf_counter() - start
        start = time.perf_counter()
        for message in messages[:max(0, args.generator - first)]:
            to_mime(message).as_bytes()
        generator += time.perf_counter() - start

    with tempfile.TemporaryDirectory() as folder:
        outbox = OutboxProvider(Path(folder))
        start = time.perf_counter()
        batch = []
        for r in people:
            batch.append(composer.message(f"r1-{r.delivery_id}", r))
            if len(batch) == 100:
                outbox.send(batch, "bench")
                batch = []
        outbox.send(batch, "bench")
        written = time.perf_counter() - start

    args.generator = min(args.generator, len(people))
    per_generated = generator / args.generator
    per_template = template / len(people)
    print(f"{len(people):,} readers over {len(VARIANTS)} variants of {DIGEST.name}, "
          f"{sum(v.size for v in variants.values()) // len(variants) // 1024} KB of HTML each")
    print(f"generator (to_mime, per reader)      {rate(args.generator, generator)}")
    print(f"template, encoding only              {rate(len(people), template)}")
    print(f"template, composing and encoding     {rate(len(people), template + composing)}")
    print(f"template / generator                 {per_generated / per_template:>9,.0f}x  "
          f"(goal: at least 3,000 messages/s from the templates)")
    print(f"outbox end to end, writing .eml      {rate(len(people), written)}")


if __name__ == "__main__":
    main()
