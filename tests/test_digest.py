import datetime as dt

import pytest

from newsletter.digest import load_digest
from newsletter.errors import DigestError

GOOD = """
---
title: A small issue
subtitle: The dek.
date: 2026-04-22
author: Ana
categories: [ai-research]
tldr:
  - First point.[^a]
---

Intro paragraph.

## First story
<!-- categories: ai-tech -->
Source: example · published 2026-04-22

- Story bullet.[^a]

Body text citing a note.[^b]

### A sub-head

> A pull quote.

## Round-ups

### Item one
Source: arxiv

One paragraph.[^b]

[^a]: [Note A](https://a.example.org/x)
    > Quoted excerpt A.

[^b]: [Note B](https://www.b.example.org/y)
"""


def problems(excinfo):
    return [str(p) for p in excinfo.value.problems]


def test_example_digest_structure(example):
    assert example.title.startswith("Lemma-7B")
    assert example.date == dt.date(2026, 4, 22)
    assert example.footnote_mode == "inline"
    stories = [s for s in example.stories if s.kind == "story"]
    assert len(stories) == 3
    assert [s.categories for s in stories] == [("ai-research",), ("ai-tech",), ("ai-news", "essays")]
    assert all(len(s.tldr_html) == 4 and s.source_html for s in stories)
    roundups = example.stories[-1]
    assert roundups.kind == "roundups" and roundups.categories is None
    assert len(roundups.entries) == 7 and all(e.source_html for e in roundups.entries)
    assert len(example.footnotes) == 18
    assert example.warnings == []
    cited = [label for s in example.sections for label in s.cited_labels]
    assert len(cited) > len(set(cited)), "some notes are cited several times"


def test_small_digest_parses(write_digest, settings):
    digest = load_digest(write_digest(GOOD), settings)
    story, roundups = digest.stories
    assert story.categories == ("ai-tech",)  # the story's own categories win over the default
    assert story.source_text == "example · published 2026-04-22"
    assert story.tldr_text == ["Story bullet.[\x02a\x03]"]
    assert 'class="pull"' in story.body_html and "<h3>A sub-head</h3>" in story.body_html
    assert roundups.entries[0].title_text == "Item one"
    assert digest.footnotes["b"].domain == "b.example.org"
    assert digest.footnotes["a"].quote_text == "Quoted excerpt A."
    assert digest.opening.cited_labels == ["a"]


def test_default_categories_apply_to_stories_without_their_own(write_digest, settings):
    digest = load_digest(write_digest(GOOD.replace("<!-- categories: ai-tech -->\n", "")), settings)
    assert digest.stories[0].categories == ("ai-research",)
    assert digest.stories[1].categories is None  # round-ups stay for everyone


@pytest.mark.parametrize("change, line, message", [
    (lambda t: t.replace("---\ntitle", "title", 1), 1, "no front matter"),
    (lambda t: t.replace("tldr:\n  - First point.[^a]\n---", "tldr: []"), 1, "not closed"),
    (lambda t: t.replace("author: Ana", "author: [Ana"), 6, "invalid front matter"),
    (lambda t: t.replace("title: A small issue\n", ""), 1, "front matter has no 'title'"),
    (lambda t: t.replace("Body text citing a note.[^b]", "Body text.[^missing]"), 19,
     "footnote [^missing] is never defined"),
    (lambda t: t.replace("categories: [ai-research]", "categories: [ai-reserch]"), 6,
     "unknown category 'ai-reserch' (known: ai-tech, ai-research, ai-news, essays)"),
    (lambda t: t.replace("<!-- categories: ai-tech -->", "<!-- categories: sports -->"), 14,
     "unknown category 'sports'"),
    (lambda t: t.replace("Intro paragraph.", "Intro TK paragraph."), 11, "leftover placeholder 'TK'"),
    (lambda t: t.replace("One paragraph.[^b]", "One paragraph, TODO check.[^b]"), 30,
     "leftover placeholder 'TODO'"),
    (lambda t: t.replace("## Round-ups", "## An empty story\n\n## Round-ups"), 25,
     "story 'An empty story' is empty"),
    (lambda t: t.replace("[^b]: [Note B](https://www.b.example.org/y)", "[^b]: Just words."), 35,
     "footnote [^b] has no source link"),
    (lambda t: t + "\n[^a]: [Again](https://x.org)\n", 37, "footnote [^a] is defined twice"),
    (lambda t: t.replace("date: 2026-04-22", "date: someday"), 4, "'date' must be a date"),
    (lambda t: t.replace("footnotes", "x").replace("author: Ana", "footnotes: sidebar"), 5,
     "'footnotes' must be 'inline' or 'end'"),
])
def test_errors_name_file_and_line(write_digest, settings, change, line, message):
    path = write_digest(change(GOOD.lstrip("\n")))
    with pytest.raises(DigestError) as excinfo:
        load_digest(path, settings)
    found = problems(excinfo)
    assert any(p.startswith(f"{path}:{line}: ") and message in p for p in found), found


def test_broken_front_matter_is_one_error(write_digest, settings):
    with pytest.raises(DigestError) as excinfo:
        load_digest(write_digest(GOOD.replace("author: Ana", "author: [Ana")), settings)
    assert len(excinfo.value.problems) == 1


def test_placeholders_in_code_are_allowed(write_digest, settings):
    text = GOOD.replace("Intro paragraph.", "Intro with `TODO` in code.\n\n```\n# TODO: not a leftover\n```")
    assert load_digest(write_digest(text), settings).title == "A small issue"


def test_uncited_note_is_a_warning(write_digest, settings):
    path = write_digest(GOOD + "\n[^c]: [Never cited](https://c.example.org)\n")
    digest = load_digest(path, settings)
    assert [str(w) for w in digest.warnings] == [f"{path}:37: footnote [^c] is defined but never cited"]
    assert "c" not in digest.footnotes


def test_every_error_is_reported(write_digest, settings):
    text = GOOD.replace("Intro paragraph.", "Intro TK.").replace("[^b]: [Note B]", "[^b]: Note B")
    with pytest.raises(DigestError) as excinfo:
        load_digest(write_digest(text), settings)
    assert len(excinfo.value.problems) == 2
    assert "(and 1 more)" in str(excinfo.value)


def test_unreadable_file(tmp_path, settings):
    with pytest.raises(DigestError, match="missing.md: file not found"):
        load_digest(tmp_path / "missing.md", settings)
    binary = tmp_path / "binary.md"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(DigestError, match="binary.md: not UTF-8 text"):
        load_digest(binary, settings)


def test_note_cited_only_in_the_front_matter(write_digest, settings):
    text = GOOD.replace("- Story bullet.[^a]", "- Story bullet.")
    digest = load_digest(write_digest(text), settings)
    assert "a" in digest.footnotes and digest.warnings == []


def test_definition_in_the_middle_of_a_story_is_not_body_text(write_digest, settings):
    text = GOOD.replace("### A sub-head", "[^c]: [Mid](https://mid.example.org)\n\n### A sub-head")
    text = text.replace("Body text citing a note.[^b]", "Body text citing a note.[^b][^c]")
    digest = load_digest(write_digest(text), settings)
    assert "mid.example.org" not in digest.stories[0].body_html
    assert digest.footnotes["c"].url == "https://mid.example.org"


def test_extra_text_in_a_note(write_digest, settings, renderer):
    text = GOOD.replace("[^b]: [Note B](https://www.b.example.org/y)",
                        "[^b]: [Note B](https://www.b.example.org/y), via a friend")
    digest = load_digest(write_digest(text), settings)
    assert digest.warnings == []
    email = renderer.render(digest)
    assert "Note B</a>, via a friend" in email.html and "Note B, via a friend (b.example.org)" in email.text
    text = text.replace("via a friend", "via a friend\n\n    A second paragraph of commentary.")
    digest = load_digest(write_digest(text), settings)
    assert [str(w).split(": ", 1)[1] for w in digest.warnings] == [
        "footnote [^b]: only its first paragraph (the source link) and its quote are shown; "
        "the rest of the note is left out"]


@pytest.mark.parametrize("change, line, message", [
    (lambda t: t.replace("  - First point.[^a]", "  - First point.[^zzz]"), 8,
     "footnote [^zzz] is never defined (in 'tldr')"),
    (lambda t: t.replace("    > Quoted excerpt A.", "    > Quoted excerpt A.[^b]"), 32,
     "footnote [^a] cites a note; a note cannot cite another note"),
    (lambda t: t.replace("<!-- categories: ai-tech -->", "<!-- categories: -->"), 14,
     "the categories comment names no category"),
])
def test_more_errors(write_digest, settings, change, line, message):
    path = write_digest(change(GOOD.lstrip("\n")))
    with pytest.raises(DigestError) as excinfo:
        load_digest(path, settings)
    assert any(p.startswith(f"{path}:{line}: ") and message in p for p in problems(excinfo)), problems(excinfo)


def test_things_that_are_not_errors(write_digest, settings):
    text = GOOD.replace("Intro paragraph.", "Intro with an escaped \\\\[^x] and a [list](https://ex.org/TODO-list).")
    text = text.replace("## First story", "## First story[^a]")
    digest = load_digest(write_digest(text), settings)
    assert digest.stories[0].anchor == "first-story"
    assert "[^x]" in digest.opening.body_html
