"""Variants that read as written for their reader: the TL;DR box follows the stories a reader
gets, and the subject and preheader can be written per category."""

from __future__ import annotations

import io
import re
from email import message_from_bytes, policy

import pytest

from newsletter.digest import load_digest
from newsletter.errors import DigestError
from newsletter.render import select

DIGEST = """\
---
title: "Whole issue: a prover, a cache trick and an essay"
subtitle: "The dek."
date: 2026-04-22
tldr:
  - "A prover that doubts itself.[^prover]"
  - "A cache six times smaller.[^cache]"
  - "Both the prover and the cache matter for small labs.[^prover][^cache]"
  - "A line about nothing in particular."
  - text: "Only for readers of essays."
    categories: [essays]
  - "A line whose note only the TL;DR cites.[^aside]"
subjects:
  ai-research: "A prover that doubts itself"
  ai-tech: "A cache six times smaller"
  ai-research, ai-tech: "A prover and a cache"
preheaders:
  ai-tech: "Long contexts on modest hardware."
---

The intro.

## A prover
<!-- categories: ai-research -->

The prover story.[^prover]

## A cache
<!-- categories: ai-tech -->

The cache story.[^cache]

## An essay
<!-- categories: essays -->

The essay.

[^prover]: [Prover paper](https://arxiv.org/abs/1)
[^cache]: [Cache paper](https://arxiv.org/abs/2)
[^aside]: [An aside](https://example.org/aside)
"""


@pytest.fixture
def digest(tmp_path, settings):
    path = tmp_path / "2026-04-22-variants.md"
    path.write_text(DIGEST, encoding="utf-8")
    return load_digest(path, settings)


def tldr(renderer, digest, categories) -> list[str]:
    text = renderer.render(digest, categories).text
    return [re.sub(r"\s+", " ", line) for line in re.findall(r"^- (.*(?:\n  .*)*)", text, re.M)]


def note_urls(email) -> list[str]:
    return re.findall(r'class="note"[^>]*>.*?<a href="([^"]+)"', email.html, re.S) or \
        [n.footnote.url for n in email.variant.notes]


def test_a_tldr_line_goes_with_the_stories_it_cites(renderer, digest):
    every = [line for line in tldr(renderer, digest, None)]
    assert len(every) == 6, every
    tech = tldr(renderer, digest, ["ai-tech"])
    assert not any("prover that doubts" in line for line in tech), "cites only a story this reader does not get"
    assert any("cache six times" in line for line in tech)
    assert any("Both the prover and the cache" in line for line in tech), "one of its notes is theirs"
    assert any("nothing in particular" in line for line in tech), "a line citing nothing is for everyone"
    assert any("only the TL;DR cites" in line for line in tech), "its note belongs to no story"
    assert not any("Only for readers of essays" in line for line in tech)
    essays = tldr(renderer, digest, ["essays"])
    assert any("Only for readers of essays" in line for line in essays)
    assert not any("cache six times" in line or "prover that doubts" in line for line in essays)


def test_a_note_cited_only_by_a_dropped_line_is_dropped_and_the_rest_renumbered(renderer, digest):
    essays = renderer.render(digest, ["essays"])
    assert [n.footnote.label for n in essays.variant.notes] == ["aside"]
    assert "[1]" in essays.text and "[2]" not in essays.text
    tech = renderer.render(digest, ["ai-tech"])
    assert [n.footnote.label for n in tech.variant.notes] == ["cache", "prover", "aside"]


def test_every_story_keeps_every_line(renderer, digest):
    assert select(digest, None).sections[0] is digest.opening
    assert len(select(digest, ["ai-research", "ai-tech", "essays"]).sections[0].tldr_html) == 6


def test_subjects_and_preheaders_per_category(renderer, digest):
    assert renderer.render(digest, None).subject == digest.title
    assert renderer.render(digest, ["ai-research"]).subject == "A prover that doubts itself"
    assert renderer.render(digest, ["ai-tech"]).subject == "A cache six times smaller"
    assert renderer.render(digest, ["ai-research", "ai-tech"]).subject == "A prover and a cache", "exact set wins"
    assert renderer.render(digest, ["ai-tech", "essays"]).subject == "A cache six times smaller"
    assert renderer.render(digest, ["essays"]).subject == digest.title, "no entry: the title"
    tech = renderer.render(digest, ["ai-tech"])
    assert tech.preheader == "Long contexts on modest hardware." and "Long contexts on modest hardware." in tech.html
    research = renderer.render(digest, ["ai-research"])
    assert research.preheader == "The dek." and "Long contexts" not in research.html


def test_a_real_send_gives_each_reader_their_subject(cli, digest, subs, tmp_path):
    from newsletter.subscribers import Consent, ConsentMethod

    for email, categories in [("r@example.com", ("ai-research",)), ("t@example.com", ("ai-tech",)),
                              ("e@example.com", ("essays",)), ("all@example.com", ())]:
        subs.add(email, categories=categories, consent=Consent(ConsentMethod.CLI))
    result = cli("send", digest.path, "--yes")
    assert result.code == 0, result.err
    subjects = {}
    for path in (tmp_path / "outbox").glob("*.eml"):
        message = message_from_bytes(path.read_bytes(), policy=policy.default)
        subjects[message["To"]] = message["Subject"]
    assert subjects == {"r@example.com": "A prover that doubts itself", "t@example.com": "A cache six times smaller",
                        "e@example.com": digest.title, "all@example.com": digest.title}


def test_test_copies_carry_each_variants_subject(cli, digest, subs, tmp_path):
    from newsletter.subscribers import Consent, ConsentMethod

    subs.add("t@example.com", categories=("ai-tech",), consent=Consent(ConsentMethod.CLI))
    assert cli("send", digest.path, "--test", "me@example.com").code == 0
    subjects = {message_from_bytes(p.read_bytes(), policy=policy.default)["Subject"]
                for p in (tmp_path / "outbox").glob("*.eml")}
    assert "[test: ai-tech] A cache six times smaller" in subjects


def test_check_warns_when_a_variant_has_an_empty_tldr(cli, tmp_path):
    text = DIGEST.replace('  - "A line about nothing in particular."\n', "") \
                 .replace('  - "A line whose note only the TL;DR cites.[^aside]"\n', "") \
                 .replace('  - text: "Only for readers of essays."\n    categories: [essays]\n', "") \
                 .replace("\n[^aside]: [An aside](https://example.org/aside)", "")
    path = tmp_path / "empty-tldr.md"
    path.write_text(text, encoding="utf-8")
    result = cli("check", path)
    assert result.code == 0, result.err
    warnings = [line for line in result.err.splitlines() if "TL;DR box is empty" in line]
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: {path}:5: the TL;DR box is empty for "
                                                         "readers of Essays"), result.err


@pytest.mark.parametrize("change, message", [
    (lambda t: t.replace("ai-tech: \"A cache", "gardening: \"A cache"), ":15: unknown category 'gardening'"),
    (lambda t: t.replace("  ai-research: \"A prover that doubts itself\"", "  ai-research: [a, list]"),
     ":14: 'subjects' of ai-research must be text"),
    (lambda t: t.replace("subjects:\n", "subjects: just one subject\nx:\n"), ":13: 'subjects' must be 'category: text'"),
    (lambda t: t.replace("    categories: [essays]\n", ""), ":10: a 'tldr' line with 'text:' needs 'categories:'"),
    (lambda t: t.replace("    categories: [essays]\n", "    categories: [essays]\n    colour: red\n"),
     ":10: a 'tldr' line is text, or 'text:' with 'categories:'"),
    (lambda t: t.replace("[essays]\n", "[sport]\n"), ":10: unknown category 'sport'"),
    (lambda t: t.replace('ai-tech: "A cache six times smaller"', 'ai-tech: "A cache\\nsix"'),
     ":15: 'subjects' is the subject line and cannot contain a line break"),
])
def test_bad_per_category_entries_are_errors_with_their_line(tmp_path, settings, change, message):
    path = tmp_path / "bad.md"
    path.write_text(change(DIGEST), encoding="utf-8")
    with pytest.raises(DigestError) as raised:
        load_digest(path, settings)
    assert any(message in str(p) for p in raised.value.problems), [str(p) for p in raised.value.problems]


def test_entries_no_reader_can_get_are_warnings(tmp_path, settings):
    text = DIGEST.replace("  ai-tech: \"A cache", "  ai-news: \"News\"\n  ai-tech: \"A cache") \
                 .replace("categories: [essays]", "categories: [ai-news]")
    path = tmp_path / "unused.md"
    path.write_text(text, encoding="utf-8")
    warnings = [str(w) for w in load_digest(path, settings).warnings]
    assert any(":10: no reader sees this 'tldr' line: no story is in ai-news" in w for w in warnings), warnings
    assert any(":15: no reader gets this entry of 'subjects': no story is in ai-news" in w for w in warnings), warnings


@pytest.fixture
def cli(run, monkeypatch, tmp_path, db_url):
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", db_url)
    monkeypatch.setenv("NEWSLETTER_OUTBOX_DIR", str(tmp_path / "outbox"))
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    return run
