import datetime as dt
import os
import re
import subprocess
import sys

import pytest
import yaml
from lxml import html as lxml_html

from newsletter import rawhtml
from newsletter.digest import LINK_STYLE, load_digest
from newsletter.errors import DigestError

from .conftest import EXAMPLE, ROOT

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
    assert "Note B</a>, via a friend" in email.html and "[2] Note B, via a friend\n    https://www.b.example.org/y\n" in email.text
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


def test_caret_brackets_are_text(write_digest, settings, renderer):
    # an inline note (^[...]) in other Markdown flavours; here it is text, not a crash
    text = GOOD.replace("Intro paragraph.", "Intro^[not a note] paragraph.")
    digest = load_digest(write_digest(text), settings)
    assert "Intro^[not a note] paragraph." in renderer.render(digest).html


def test_things_that_are_not_errors(write_digest, settings):
    text = GOOD.replace("Intro paragraph.", "Intro with an escaped \\\\[^x] and a [list](https://ex.org/TODO-list).")
    text = text.replace("## First story", "## First story[^a]")
    digest = load_digest(write_digest(text), settings)
    assert digest.stories[0].anchor == "first-story"
    assert "[^x]" in digest.opening.body_html


# -- raw HTML: an allow-list fit for email -------------------------------------------------------

def line_of(text: str, needle: str) -> int:
    """The line of `text` (as written to the file) where `needle` first appears."""
    return text.lstrip("\n")[:text.lstrip("\n").index(needle)].count("\n") + 1


HOSTILE = (GOOD
           .replace("  - First point.[^a]", "  - First <script>alert(7)</script> point.[^a]")
           .replace("Intro paragraph.", """Intro paragraph with <script>alert(1)</script> inline.

<style>p { color: red }</style>
<meta http-equiv="refresh" content="0;url=https://evil.example">
<base href="https://evil.example/">

<iframe src="https://evil.example"></iframe>

<form action="https://evil.example"><input name="q">Search</form>""")
           .replace("## First story", '## First <b onmouseover="alert(6)">story</b>')
           .replace("- Story bullet.[^a]",
                    '- Story bullet <a href="javascript:alert(2)" onclick="steal()">here</a>.[^a]')
           .replace("One paragraph.[^b]", 'One <span style="background:url(javascript:alert(4))">'
                    'paragraph</span>.[^b]\n\n<p style="width:expression(alert(5))">Styled.</p>')
           .replace("[^a]: [Note A](https://a.example.org/x)", '[^a]: [Note A](https://a.example.org/x) '
                    '<img src="https://a.example.org/i.png" onerror="alert(3)">'))


def test_hostile_raw_html_never_reaches_the_email(write_digest, settings, renderer):
    digest = load_digest(write_digest(HOSTILE), settings)
    page = renderer.render(digest).html
    for marker in ("alert(", "<script", "color: red", "onclick", "onerror", "onmouseover", "javascript:",
                   "expression(", "<iframe", "<form", "<input", "<base", "refresh", "evil.example"):
        assert marker not in page, marker
    for kept in ("inline.", "Story bullet <a", "here</a>", "paragraph</span>", "Styled.", "Search",
                 'src="https://a.example.org/i.png"', "First <b>story</b>"):
        assert kept in page, kept


def test_check_says_what_it_removed_and_where(write_digest, settings):
    path = write_digest(HOSTILE)
    warnings = [str(w) for w in load_digest(path, settings).warnings]
    expected = [
        ("  - First <script>", "removed <script> element with its content"),
        ("Intro paragraph with", "removed <script> element with its content"),
        ("<style>", "removed <style> element with its content"),
        ("<meta", "removed <meta> tag (not allowed in an email)"),
        ("<base", "removed <base> tag (not allowed in an email)"),
        ("<iframe", "removed <iframe> element with its content"),
        ("<form", "removed <form> tag, kept its content"),
        ("<form", "removed <input> tag (not allowed in an email)"),
        ("## First", "removed onmouseover attribute from <b>"),
        ("- Story bullet", "removed <a> href 'javascript:alert(2)'"),
        ("- Story bullet", "removed onclick attribute from <a>"),
        ("One <span", "removed style attribute from <span>"),
        ("<p style", "removed style attribute from <p>"),
        ("[^a]: [Note A]", "removed onerror attribute from <img>"),
    ]
    for needle, message in expected:
        where = f"{path}:{line_of(HOSTILE, needle)}: "
        assert any(w.startswith(where) and message in w for w in warnings), (where, message, warnings)
    assert len(warnings) == len(expected), warnings


@pytest.mark.parametrize("written, message", [
    ("[a page](page.html)", "the link 'page.html' leads nowhere in an email"),
    ("[typo](htp://x.example.org)", "the link 'htp://x.example.org' leads nowhere in an email"),
    ("[click](javascript:alert(1))", "the link 'javascript:alert(1)' leads nowhere in an email"),
    ("<javascript:alert(1)>", "the link 'javascript:alert(1)' leads nowhere in an email"),
    ("[files](ftp://files.example.org/x)", "the link 'ftp://files.example.org/x' leads nowhere"),
    ("![a chart](chart.png)", "the image 'chart.png' cannot load in an email: its URL must start with https://"),
    ("![a chart](//cdn.example.org/chart.png)", "the image '//cdn.example.org/chart.png' cannot load"),
    ("![a chart](data:image/png;base64,iVBO)", "the image 'data:image/png;base64,iVBO' cannot load"),
    ("![a chart](mailto:a@example.org)", "the image 'mailto:a@example.org' cannot load"),
])
def test_links_and_images_an_email_cannot_use_are_errors(write_digest, settings, written, message):
    text = GOOD.replace("Body text citing a note.[^b]", f"Body text\nciting {written} a note.[^b]")
    text = text.replace("Intro paragraph.", "Intro TK.")  # reported too: nothing hides the rest
    path = write_digest(text)
    with pytest.raises(DigestError) as excinfo:
        load_digest(path, settings)
    found = problems(excinfo)
    assert len(found) == 2 and found[0] == f"{path}:11: leftover placeholder 'TK'", found
    assert found[1].startswith(f"{path}:20: {message}") and "\n" not in found[1], found


@pytest.mark.parametrize("written", [
    "[web](https://x.example.org/a)", "[web](http://x.example.org)", "[mail](mailto:ana@example.org)",
    "[up](#first-story)", "<https://x.example.org>", "![a chart](https://img.example.org/c.png)",
    "![a chart](HTTP://img.example.org/c.png)",
])
def test_links_and_images_an_email_can_use(write_digest, settings, written):
    digest = load_digest(write_digest(GOOD.replace("Body text citing", f"Body {written} citing")), settings)
    assert digest.warnings == []


def test_image_without_alt_text_is_a_warning(write_digest, settings):
    path = write_digest(GOOD.replace("Body text citing a note.[^b]", "Body.[^b]\n\n![](https://i.example.org/c.png)"))
    assert [str(w) for w in load_digest(path, settings).warnings] == [
        f"{path}:21: the image 'https://i.example.org/c.png' has no alt text, which readers see when images "
        "are blocked and screen readers read out"]


def test_raw_html_links_an_email_cannot_follow_are_removed_with_a_warning(write_digest, settings, renderer):
    text = GOOD.replace("Intro paragraph.", 'Intro <a href="page.html">relative</a>, <a href="ftp://f.example.org/x">'
                        'ftp</a>\nand <img src="//cdn.example.org/chart.png" alt="a chart"> paragraph.')
    path = write_digest(text)
    digest = load_digest(path, settings)
    assert [str(w) for w in digest.warnings] == [
        f"{path}:11: removed <a> href 'page.html' (an email can only link to http, https and mailto URLs "
        "and to #anchors)",
        f"{path}:11: removed <a> href 'ftp://f.example.org/x' (an email can only link to http, https "
        "and mailto URLs and to #anchors)",
        f"{path}:12: removed <img> src '//cdn.example.org/chart.png' (an email can only link to http, "
        "https and mailto URLs and to #anchors)"]
    page = renderer.render(digest).html
    assert "page.html" not in page and "ftp:" not in page and "cdn.example.org" not in page
    assert "relative</a>" in page and 'alt="a chart"' in page


@pytest.mark.parametrize("cited, suggestion", [
    ("[^bb]", "; did you mean [^b]?"),
    ("[^quip3-sped]", "; did you mean [^quip3-speed]?"),
    ("[^Quip3-Speed]", "; did you mean [^quip3-speed]?"),
    ("[^unrelated-label]", ""),
])
def test_misspelt_footnote_label_suggests_the_closest(write_digest, settings, cited, suggestion):
    text = GOOD.replace("Body text citing a note.[^b]", f"Body text citing a note.[^b]{cited}")
    text += "\n[^quip3-speed]: [Speed](https://q.example.org)\n"
    path = write_digest(text.replace("One paragraph.[^b]", "One paragraph.[^b][^quip3-speed]"))
    with pytest.raises(DigestError) as excinfo:
        load_digest(path, settings)
    assert problems(excinfo) == [f"{path}:19: footnote [{cited[1:-1]}] is never defined{suggestion}"]


def test_check_prints_the_removals(run, tmp_path):
    digest = tmp_path / "raw.md"
    digest.write_text(GOOD.lstrip().replace("Intro paragraph.", 'Intro <span onclick="x()">paragraph</span>.'))
    result = run("check", digest)
    assert result.code == 0
    assert f"warning: {digest}:11: removed onclick attribute from <span>" in result.err


def test_raw_html_that_is_fine_is_kept(write_digest, settings, renderer):
    text = GOOD.replace("Body text citing a note.[^b]",
                        'Body <span title="t">text *citing*</span> a <sup>note</sup>.[^b] <b>Bold '
                        '<a href="https://x.example.org/" title="X">link</a></b> <a href="#first-story">up</a>'
                        '\n\n<table><tr><td>A cell</td></tr></table>')
    digest = load_digest(write_digest(text), settings)
    assert digest.warnings == []
    body = digest.stories[0].body_html
    # the <span> opens and closes in different tokens, around Markdown emphasis
    assert '<span title="t">text <em>citing</em></span>' in body
    assert "<sup>note</sup>" in body and "<td>A cell</td>" in body
    assert '<a href="https://x.example.org/" title="X" style="color:#0b57d0">link</a>' in body
    assert '<a href="#first-story" style="color:#0b57d0">up</a>' in body
    email = renderer.render(digest)
    assert '<span title="t">text <em>citing</em></span>' in email.html


def test_references_survive_the_sanitizer(write_digest, settings, renderer):
    text = GOOD.replace("Body text citing a note.[^b]", "Body <span>text citing[^b]</span> and[^odd&<lab>]")
    text += "\n[^odd&<lab>]: [Odd label](https://odd.example.org)\n"
    digest = load_digest(write_digest(text), settings)
    assert digest.stories[0].cited_labels == ["a", "b", "odd&<lab>"]
    tree = lxml_html.fromstring(renderer.render(digest).html)
    refs = [a.get("href") for a in tree.xpath("//sup[@class='fnref']/a")]
    assert refs == ["#fn-1", "#fn-1", "#fn-2", "#fn-3", "#fn-2"]
    assert tree.xpath("string(//a[@name='fn-3']/following-sibling::a[1])") == "Odd label"


def test_sanitising_leaves_our_own_html_alone(monkeypatch, example, session_settings):
    """The example digest's HTML is the same whether or not it goes through the sanitizer."""
    class Untouched:
        def clean(self, html):  # only what the sanitizer adds on purpose: the style of links
            return re.sub(r"<a ([^>]*)>", lambda m: f'<a {m.group(1)} style="{LINK_STYLE}">', html)
    monkeypatch.setattr(rawhtml, "CLEANER", Untouched())
    unsanitised = load_digest(EXAMPLE, session_settings)
    fragments = lambda d: [  # noqa: E731
        [s.title_html, s.source_html, s.tldr_html, s.body_html,
         [(e.title_html, e.source_html, e.body_html) for e in s.entries]] for s in d.sections
    ] + [(n.source_html, n.quote_html) for n in d.footnotes.values()]
    assert fragments(unsanitised) == fragments(example)
    assert "<blockquote class=\"pull\">" in str(fragments(example))


# -- raw HTML that is odd rather than hostile: it renders, or it is an error with a line -----------

@pytest.mark.parametrize("odd", [
    "<div>\nunclosed div",
    "x <img src=x> y",
    "x <img src=https://img.example.org/a.png> y",
    "<p>unclosed",
    "stray </div> closing tag",
    "<b><i>misnested</b></i>",
    "<table><td>a cell without a row",
    "<a href=https://x.example.org>a link never closed",
    '<span title="a>b" data-x=\'1"2\'>attributes with quotes</span>',
    "<br/> <hr> <wbr> void elements",
    "<!-- a comment --> closed",
    "<script>gone</script> and <style>gone</style> and <svg><path/></svg> closed",
    "<svg><path/> closed by the paragraph's end",
    "<script>\n\n*gone*\n\n</script>",
    "<!-- a comment -->",
    "&nbsp; &copy; &bogus; &#0; &#x110000; entities",
    "a < b > c & d",
    "<ul><li>one<li>two",
    "<h1>a raw heading</h1>",
    "<pre>\n  spaced\n</pre>",
    '<div style="x">\n\nMarkdown *inside* a div\n\n</div>',
])
def test_odd_raw_html_renders_whole(write_digest, settings, renderer, odd):
    text = GOOD.replace("Intro paragraph.", f"{odd}\n\nIntro paragraph.")
    text = text.replace("One paragraph.[^b]", f"One paragraph.[^b] {odd}")
    digest = load_digest(write_digest(text), settings)
    email = renderer.render(digest)
    # nothing after the odd HTML vanished: the rest of the email is there, footer included
    for after in ("Intro paragraph.", "Body text citing a note", "Note B", settings.postal_address):
        assert after in email.html, after


@pytest.mark.parametrize("char", ["\x02", "\x03", "\x00", "\x1b", "\x7f", "\x0c", "\x85"])
def test_control_characters_in_the_body_are_errors(write_digest, settings, char):
    text = GOOD.replace("Body text citing a note.[^b]", f"Body text{char} citing a note.[^b]")
    text = text.replace("One paragraph.[^b]", "One \x02b\x03 paragraph.[^b]")
    path = write_digest(text)
    with pytest.raises(DigestError) as excinfo:
        load_digest(path, settings)
    found = problems(excinfo)
    assert any(p.startswith(f"{path}:19: ") and "control character" in p for p in found), found
    assert any(p.startswith(f"{path}:30: ") and "control character '\\x02'" in p for p in found), found


def test_tabs_and_line_ends_are_text(write_digest, settings, renderer):
    text = GOOD.lstrip().replace("Body text citing a note.[^b]", "Body\ttext citing a note.[^b]").replace("\n", "\r\n")
    digest = load_digest(write_digest(text), settings)
    assert "Body\ttext" in digest.stories[0].body_html
    lone_cr = write_digest(GOOD.replace("Intro paragraph.", "Intro TK."), "cr.md")
    lone_cr.write_bytes(lone_cr.read_bytes().replace(b"\n", b"\r"))
    with pytest.raises(DigestError, match=r"cr.md:11: leftover placeholder"):
        load_digest(lone_cr, settings)


def test_control_character_in_the_front_matter_has_its_line(write_digest, settings):
    path = write_digest(GOOD.replace("author: Ana", "author: A\x1bna"))
    with pytest.raises(DigestError) as excinfo:
        load_digest(path, settings)
    assert problems(excinfo)[0].startswith(f"{path}:5: invalid front matter")


# -- nesting: never a silently truncated email ----------------------------------------------------

@pytest.mark.parametrize("deep", [
    "<div>" * 300 + "deep",
    "<div>" * 150 + "deep" + "</div>" * 150,
    "<blockquote><span>" * 60 + "deep",
    "*" * 600 + "deep" + "*" * 600,
    "<div>\n" * 90 + "\n" + "> " * 15 + "deep",
])
def test_deep_nesting_is_an_error_with_its_line(write_digest, settings, deep):
    text = GOOD.replace("Body text citing a note.[^b]", f"Body text citing a note.[^b]\n\n{deep}")
    path = write_digest(text)
    with pytest.raises(DigestError) as excinfo:
        load_digest(path, settings)
    found = problems(excinfo)
    lines = range(21, 21 + deep.count("\n") + 1)
    assert any(p.split(":")[1].isdigit() and int(p.split(":")[1]) in lines and "nest more than 100 levels" in p
               for p in found), found


def test_deep_tables_are_measured_as_browsers_build_them(write_digest, settings):
    # 40 tables in tables: 80 tags, but 160 elements once a browser adds tbody and tr
    text = GOOD.replace("Body text citing a note.[^b]", "Body text.[^b]\n\n" + "<table><td>" * 40 + "x")
    path = write_digest(text)
    with pytest.raises(DigestError) as excinfo:
        load_digest(path, settings)
    assert any(p.startswith(f"{path}:13: ") and "nest more than 100 levels" in p for p in problems(excinfo))


def test_nesting_within_the_limit_renders_whole(write_digest, settings, renderer):
    deep = "<div>" * 95 + "deep" + "</div>" * 95
    text = GOOD.replace("Body text citing a note.[^b]", f"Body text citing a note.[^b]\n\n{deep}")
    email = renderer.render(load_digest(write_digest(text), settings))
    tree = lxml_html.fromstring(email.html)
    assert tree.xpath("//a[text()='Unsubscribe']"), "the email is whole down to its footer"
    assert "deep" in tree.text_content()


@pytest.mark.parametrize("deep, line", [
    ("> " * 25 + "lost in the quotes", 21),
    ("- " * 12 + "lost in the lists", 21),
    ("- a\n" + "".join("  " * i + "- a\n" for i in range(1, 12)) + "  " * 12 + "- lost", 30),
])
def test_markdown_nesting_limit_is_an_error(write_digest, settings, deep, line):
    text = GOOD.replace("Body text citing a note.[^b]", f"Body text citing a note.[^b]\n\n{deep}")
    path = write_digest(text)
    with pytest.raises(DigestError) as excinfo:
        load_digest(path, settings)
    assert any(p.startswith(f"{path}:{line}: ") and "nest too deep" in p for p in problems(excinfo)), \
        problems(excinfo)


@pytest.mark.parametrize("unclosed, line", [
    ("<!-- a comment never closed", 30),
    ("<script>\nnever closed", 30),
    ("<pre>\nnever closed", 30),
    ("<?php never closed", 30),
    ("text <script> never closed", 30),
    ("text\n<object> never closed", 31),
    ("<div><textarea>\n\nnever closed", 30),
    ("<table><tr><td>\n\n*never* <template>closed\n\n</td></tr></table>", 32),
])
def test_unclosed_raw_html_that_would_swallow_the_rest_is_an_error(write_digest, settings, unclosed, line):
    path = write_digest(GOOD.replace("One paragraph.[^b]", f"{unclosed}\n\nOne paragraph.[^b]"))
    with pytest.raises(DigestError) as excinfo:
        load_digest(path, settings)
    assert any(p.startswith(f"{path}:{line}: ") and "never closed" in p for p in problems(excinfo)), \
        problems(excinfo)


# -- YAML front matter: no alias bombs, no duplicate keys, no huge values in messages -------------

BOMB = "\n".join(["---", "title: Boom", 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
                 + [f"{k}: &{k} [{', '.join([f'*{p}'] * 9)}]" for p, k in zip("abcdefgh", "bcdefghi")]
                 + ["date: *i", "footnotes: *i", "---", "", "## A story", "", "Text.", ""])

LOAD_SCRIPT = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
from newsletter.config import load_settings
from newsletter.digest import load_digest
from newsletter.errors import DigestError
try:
    digest = load_digest(sys.argv[1], load_settings(sys.argv[2], env={}))
    print("ok", len(digest.stories), len(digest.warnings))
except DigestError as e:
    print("\\n".join(str(p) for p in e.problems))
"""


def load_in_subprocess(path) -> list[str]:
    """Load a digest in a process of its own, with a deadline and 2 GB of memory at most."""
    result = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, str(path), str(ROOT / "newsletter.toml")],
                            capture_output=True, text=True, timeout=60, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.splitlines()


def test_yaml_alias_bomb_is_refused(write_digest):
    path = write_digest(BOMB)
    assert len(BOMB) < 1000
    out = load_in_subprocess(path)
    assert any(line.startswith(f"{path}:4: ") and "YAML alias" in line for line in out), out
    assert all(len(line) < 300 for line in out)


def test_yaml_alias_is_refused(write_digest, settings):
    path = write_digest(GOOD.replace("author: Ana", "author: &who Ana\nsubtitle: *who").replace(
        "subtitle: The dek.\n", ""))
    with pytest.raises(DigestError) as excinfo:
        load_digest(path, settings)
    assert problems(excinfo) == [f"{path}:5: 'subtitle' uses a YAML alias (*name); aliases are not allowed "
                                 "in the front matter"]


def test_duplicate_keys_are_errors(write_digest, settings):
    path = write_digest(GOOD.replace("author: Ana", "author: Ana\ntitle: Another title"))
    with pytest.raises(DigestError) as excinfo:
        load_digest(path, settings)
    assert problems(excinfo) == [f"{path}:6: key 'title' is given twice in the front matter (first on line 2)"]


HUGE = "x" * 100_000


@pytest.mark.parametrize("change", [
    lambda t: t.replace("date: 2026-04-22", f"date: {HUGE}"),
    lambda t: t.replace("footnotes", "x").replace("author: Ana", f"footnotes: {HUGE}"),
    lambda t: t.replace("categories: [ai-research]", f"categories: [{HUGE}]"),
    lambda t: t.replace("<!-- categories: ai-tech -->", f"<!-- categories: {HUGE} -->"),
    lambda t: t.replace("Body text citing a note.[^b]", f"Body text.[^{HUGE}]"),
    lambda t: t.replace("## Round-ups", f"## {HUGE}\n\n## Round-ups"),
    lambda t: t.replace("author: Ana", f"author: !{HUGE} Ana"),
    lambda t: t.replace("author: Ana", f'author: "{HUGE}\\x1b"'),
    lambda t: t + f"\n[^{HUGE}]: [Again](https://x.org)\n\n[^{HUGE}]: [Again](https://x.org)\n",
])
def test_messages_never_print_huge_values(write_digest, settings, change):
    with pytest.raises(DigestError) as excinfo:
        load_digest(write_digest(change(GOOD)), settings)
    assert all(len(p) < 400 for p in problems(excinfo)), [p[:500] for p in problems(excinfo)]


def test_warnings_never_print_huge_values(write_digest, settings):
    text = GOOD.replace("author: Ana", f"? {HUGE}\n: 1") + f"\n[^{HUGE}]: [Never cited](https://c.example.org)\n"
    warnings = [str(w) for w in load_digest(write_digest(text), settings).warnings]
    assert len(warnings) == 2 and all(len(w) < 400 for w in warnings), [w[:500] for w in warnings]


def test_front_matter_is_parsed_once_with_libyaml(write_digest, settings, monkeypatch):
    assert yaml.__with_libyaml__, "PyYAML here is built with libyaml"
    made = []
    original = yaml.CSafeLoader.__init__

    def counting(self, stream):
        made.append(stream)
        original(self, stream)

    def refuse(self, stream):
        raise AssertionError("the pure-Python loader was used")
    monkeypatch.setattr(yaml.CSafeLoader, "__init__", counting)
    monkeypatch.setattr(yaml.SafeLoader, "__init__", refuse)
    digest = load_digest(write_digest(GOOD), settings)
    assert digest.title == "A small issue" and len(made) == 1


# -- every check takes time linear in the size of the digest --------------------------------------

@pytest.mark.parametrize("name, change", [
    ("a long word", lambda t: t.replace("Intro paragraph.", "x" * 400_000)),
    ("a long footnote title", lambda t: t.replace("[Note B]", "[" + "x" * 400_000 + "]")),
    ("many [^", lambda t: t.replace("Intro paragraph.", "[^" * 30_000)),
    ("many backticks", lambda t: t.replace("Intro paragraph.", "x " + "`" * 20_000 + " x")),
    ("many undefined notes", lambda t: t.replace("Intro paragraph.", " ".join(f"[^u{i}]" for i in range(40_000)))),
])
def test_hostile_inputs_are_checked_in_linear_time(write_digest, name, change):
    out = load_in_subprocess(write_digest(change(GOOD)))  # the deadline is the test
    assert out, name


# -- the title is the subject: one line, no control characters -------------------------------------

@pytest.mark.parametrize("title", [
    r'"Two\r\nlines"', r'"Two\nlines"', r'"Carriage\rreturn"', r'"N\0UL"', r'"Esc\e[31mape"',
    r'"Line\u2028separator"', "|\n  Two\n  lines",
])
def test_title_must_be_one_clean_line(write_digest, settings, title):
    path = write_digest(GOOD.replace("title: A small issue", f"title: {title}"))
    with pytest.raises(DigestError) as excinfo:
        load_digest(path, settings)
    found = problems(excinfo)
    assert any(p.startswith(f"{path}:2: 'title' ") for p in found), found


@pytest.mark.parametrize("key", ["subtitle", "author", "preheader"])
def test_other_front_matter_text_refuses_control_characters(write_digest, settings, key):
    text = GOOD.replace("subtitle: The dek.\n", "").replace("author: Ana\n", "")
    path = write_digest(text.replace("date:", f'{key}: "Ref \\x02b\\x03 here"\ndate:'))
    with pytest.raises(DigestError) as excinfo:
        load_digest(path, settings)
    assert problems(excinfo) == [f"{path}:3: '{key}' contains the control character '\\x02'; remove it"]


def test_control_characters_in_tldr_are_errors(write_digest, settings):
    path = write_digest(GOOD.replace("  - First point.[^a]", '  - "First \\x02b\\x03 point.[^a]"'))
    with pytest.raises(DigestError) as excinfo:
        load_digest(path, settings)
    assert problems(excinfo) == [f"{path}:8: 'tldr' contains the control character '\\x02'; remove it"]


@pytest.mark.parametrize("char", ["\u202e", "\u2066", "\u202a"])
def test_bidi_controls_in_the_title_are_a_warning(write_digest, settings, char):
    path = write_digest(GOOD.replace("title: A small issue", f"title: Invoice {char}fdp.exe"))
    digest = load_digest(path, settings)
    assert [str(w) for w in digest.warnings] == [
        f"{path}:2: 'title' contains the invisible bidirectional control U+{ord(char):04X}, which can make "
        "the subject read differently from what it is"]


# -- source lines and TL;DR labels as writers from Substack, Ghost or a blog write them -----------

SOURCE_LINE = "Source: example · published 2026-04-22"


@pytest.mark.parametrize("written", [
    "*Source: example · published 2026-04-22*",
    "_Source: example · published 2026-04-22_",
    "**Source:** example · published 2026-04-22",
    "**Source: example · published 2026-04-22**",
    "*Source:* example · published 2026-04-22",
    "*Source*: example · published 2026-04-22",
    "***Source: example · published 2026-04-22***",
    "source : example · published 2026-04-22",
])
def test_source_line_spellings(write_digest, settings, renderer, written):
    plain = load_digest(write_digest(GOOD, "plain.md"), settings)
    digest = load_digest(write_digest(GOOD.replace(SOURCE_LINE, written)), settings)
    story = digest.stories[0]
    assert (story.source_html, story.source_text) == (plain.stories[0].source_html, "example · published 2026-04-22")
    assert story.body_html == plain.stories[0].body_html and digest.warnings == []
    html = renderer.render(digest).html
    assert html == renderer.render(plain).html
    assert html.count("example · published 2026-04-22") == 1 and "Source:" not in html.split('class="source"')[0]


def test_round_up_source_line_spelled_with_emphasis(write_digest, settings):
    digest = load_digest(write_digest(GOOD.replace("Source: arxiv", "**Source:** arxiv")), settings)
    item = digest.stories[1].entries[0]
    assert item.source_text == "arxiv" and "Source" not in item.body_html and digest.warnings == []


@pytest.mark.parametrize("label", ["**TL;DR**", "TL;DR", "TL;DR:", "### TL;DR", "*TL;DR:*", "__TLDR__"])
def test_tldr_label_spellings(write_digest, settings, renderer, label):
    plain = load_digest(write_digest(GOOD, "plain.md"), settings)
    text = GOOD.replace("- Story bullet.[^a]", f"{label}\n\n- Story bullet.[^a]")
    digest = load_digest(write_digest(text), settings)
    story = digest.stories[0]
    assert story.tldr_html == plain.stories[0].tldr_html == ["Story bullet.\x02a\x03"]
    assert story.body_html == plain.stories[0].body_html and digest.warnings == []
    html = renderer.render(digest).html
    assert html == renderer.render(plain).html
    tree = lxml_html.fromstring(html)
    assert len(tree.xpath("//*[@class='tldr']")) == 2  # the opening's and the story's, no more
    assert tree.text_content().count("TL;DR") == 2 and "TLDR" not in tree.text_content()


def test_emphasised_source_and_tldr_label_together(write_digest, settings, renderer):
    plain = load_digest(write_digest(GOOD, "plain.md"), settings)
    text = GOOD.replace(SOURCE_LINE, f"*{SOURCE_LINE}*").replace("- Story bullet.[^a]",
                                                                "**TL;DR**\n- Story bullet.[^a]")
    digest = load_digest(write_digest(text), settings)
    assert renderer.render(digest).html == renderer.render(plain).html


@pytest.mark.parametrize("change, needle, message", [
    (lambda t: t.replace("Body text citing a note.[^b]", "Body text citing a note.[^b]\n\n*Source: elsewhere*"),
     "*Source: elsewhere*", "this looks like a source line but is shown as body text"),
    (lambda t: t.replace("- Story bullet.[^a]\n", "- Story bullet.[^a]\n\n**Source:** late"),
     "**Source:** late", "this looks like a source line but is shown as body text"),
    (lambda t: t.replace("One paragraph.[^b]", "One paragraph.[^b]\n\n_Source: arxiv_"),
     "_Source: arxiv_", "this looks like a source line but is shown as body text"),
    (lambda t: t.replace("Body text citing a note.[^b]", "**TL;DR**\n\nBody text citing a note.[^b]"),
     "**TL;DR**", "this 'TL;DR' label is shown as body text: a story's TL;DR is the bullet list"),
    (lambda t: t.replace("- Story bullet.[^a]", "### TL;DR\n\nNo bullets.[^a]"),
     "### TL;DR", "this 'TL;DR' label is shown as body text"),
    (lambda t: t.replace("Intro paragraph.", "TL;DR:\n\n- An intro bullet."),
     "TL;DR:", "this 'TL;DR' label is shown as body text: the TL;DR box at the top is the 'tldr' list"),
    (lambda t: t.replace("Intro paragraph.", "Source: somewhere"),
     "Source: somewhere", "this looks like a source line but is shown as body text"),
])
def test_misplaced_source_line_or_tldr_label_is_a_warning(write_digest, settings, change, needle, message):
    text = change(GOOD)
    path = write_digest(text)
    warnings = [str(w) for w in load_digest(path, settings).warnings]
    assert len(warnings) == 1 and warnings[0].startswith(f"{path}:{line_of(text, needle)}: {message}"), warnings


def test_body_text_that_only_mentions_sources_is_no_warning(write_digest, settings):
    text = GOOD.replace("Body text citing a note.[^b]", "Body text citing a note.[^b] Source: the filing.\n\n"
                        "Sources say the TL;DR is wrong.\n\n*Sourced* from *TL;DR* readers.")
    assert load_digest(write_digest(text), settings).warnings == []


# -- front matter values YAML would convert: an error with a line, or the text as written ---------

@pytest.mark.parametrize("written, message", [
    ("date: 2026-02-30", "'date' 2026-02-30 is not a day of the calendar"),
    ("date: '2026-13-01'", "'date' 2026-13-01 is not a day of the calendar"),
    ("date: 2026-02-30 10:00:00", "'date' 2026-02-30 10:00:00 is not a day of the calendar"),
    ("date: !!timestamp 2026-02-30", "invalid front matter: cannot read 2026-02-30 as timestamp"),
    ("date: yes", "'date' must be a date like 2026-04-22, got 'yes'"),
    ("date: 20260422", "'date' must be a date like 2026-04-22, got '20260422'"),
    ("date: [2026-04-22]", "'date' must be a date like 2026-04-22, got ['2026-04-22']"),
    ("author: [Ana, Ben]", "'author' must be text, got a list"),
    ("author: {name: Ana}", "'author' must be text, got key: value pairs"),
    ("author: !!int 99999999999999999999", "'author' must be text, got int"),
    ("author: !!float .nan", "'author' must be text, got float"),
    ("author: !!int twelve", "invalid front matter: cannot read twelve as int"),
    ("author: !!binary aGVsbG8=", "'author' must be text, got bytes"),
    ("~: Ana", "a front matter key must be a name such as 'title'"),
    ("author:\n  - !!timestamp 2026-02-30", "invalid front matter: cannot read 2026-02-30 as timestamp"),
])
def test_front_matter_values_yaml_converts_are_errors_with_their_line(write_digest, settings, written, message):
    text = GOOD.replace("date: 2026-04-22\n", "").replace("author: Ana", written)
    text = text.replace("Intro paragraph.", "Intro TK.")
    path = write_digest(text)
    with pytest.raises(DigestError) as excinfo:
        load_digest(path, settings)
    found = problems(excinfo)
    extra = written.count("\n")
    assert any(p.startswith(f"{path}:{4 + extra}: {message}") for p in found), found
    assert f"{path}:{10 + extra}: leftover placeholder 'TK'" in found  # the other problems are still reported


@pytest.mark.parametrize("written, title", [
    ("yes", "yes"), ("No", "No"), ("on", "on"), ("2026-01-01", "2026-01-01"), (".nan", ".nan"),
    ("1e3", "1e3"), ("0x1F", "0x1F"), ("123456789012345678901234567890", "123456789012345678901234567890"),
    ("12:30", "12:30"), ("1.50", "1.50"), ("2026-04-22 10:30:00", "2026-04-22 10:30:00"), ("'null'", "null"),
])
def test_plain_front_matter_values_are_the_text_written(write_digest, settings, written, title):
    text = GOOD.replace("title: A small issue", f"title: {written}").replace("author: Ana", f"author: {written}")
    digest = load_digest(write_digest(text.replace("  - First point.[^a]", f"  - {written}\n  - First point.[^a]")),
                         settings)
    assert (digest.title, digest.author, digest.opening.tldr_text[0]) == (title, title, title)


@pytest.mark.parametrize("written, date", [
    ("2026-04-22", dt.date(2026, 4, 22)), ("'2026-04-22'", dt.date(2026, 4, 22)),
    ("2026-04-22 10:30:00", dt.date(2026, 4, 22)), ("2026-04-22T23:30:00+02:00", dt.date(2026, 4, 22)),
    ("2024-02-29", dt.date(2024, 2, 29)), ("", None), ("null", None),
])
def test_dates_as_writers_write_them(write_digest, settings, written, date):
    assert load_digest(write_digest(GOOD.replace("date: 2026-04-22", f"date: {written}")), settings).date == date


@pytest.mark.parametrize("written, message", [
    ("title: [Two, titles]", "'title' must be text, got a list"),
    ("title:\n  text: A small issue", "'title' must be text, got key: value pairs"),
])
def test_a_title_that_is_not_text_is_one_error(write_digest, settings, written, message):
    path = write_digest(GOOD.replace("title: A small issue", written))
    with pytest.raises(DigestError) as excinfo:
        load_digest(path, settings)
    assert problems(excinfo) == [f"{path}:2: {message}"]


@pytest.mark.parametrize("written", ["title:", "title: null", "title: ~", "title: ''"])
def test_an_empty_title_is_a_missing_title(write_digest, settings, written):
    path = write_digest(GOOD.replace("title: A small issue", written))
    with pytest.raises(DigestError) as excinfo:
        load_digest(path, settings)
    assert problems(excinfo) == [f"{path}:2: front matter has no 'title'"]


def test_empty_optional_values_are_their_defaults(write_digest, settings):
    text = GOOD.replace("author: Ana", "author:\nfootnotes:\nstatus: ~\npreheader: null")
    text = text.replace("  - First point.[^a]\n", "").replace("subtitle: The dek.", "subtitle:")
    digest = load_digest(write_digest(text), settings)
    assert (digest.author, digest.footnote_mode, digest.status, digest.preheader, digest.subtitle) == \
        ("", "inline", "draft", "", "")
    assert digest.opening.tldr_html == []


def test_check_reports_an_impossible_date_with_the_other_problems(run, tmp_path):
    digest = tmp_path / "dated.md"
    digest.write_text(GOOD.lstrip().replace("date: 2026-04-22", "date: 2026-02-30")
                      .replace("Intro paragraph.", "Intro TK.").replace("title: A small issue", "title: yes"))
    result = run("check", digest)
    assert result.code == 1, result.err
    assert f"error: {digest}:4: 'date' 2026-02-30 is not a day of the calendar" in result.err
    assert f"error: {digest}:11: leftover placeholder 'TK'" in result.err
    assert "Traceback" not in result.err and "unexpected" not in result.err


# -- placeholders: TK as a word of its own ---------------------------------------------------------

@pytest.mark.parametrize("written, word", [
    ("TK", "TK"), ("TK.", "TK"), ("(TK)", "TK"), ("TK,", "TK"), ("[TK]", "TK"), ("TK: the figure", "TK"),
    ("— TK —", "TK"), ("“TK”", "TK"), ("TK/TODO", "TK"), ("TODO", "TODO"), ("TODO:", "TODO"),
])
def test_placeholder_words_are_errors(write_digest, settings, written, word):
    path = write_digest(GOOD.replace("Intro paragraph.", f"Intro {written} paragraph."))
    with pytest.raises(DigestError) as excinfo:
        load_digest(path, settings)
    assert problems(excinfo) == [f"{path}:11: leftover placeholder '{word}'"]


@pytest.mark.parametrize("written", ["TK-Instruct", "TKO", "sTK", "TK.js", "MTK", "TK2", "TK_small", "GPT-TK",
                                     "TODOist", "TODO-list"])
def test_names_containing_tk_are_not_placeholders(write_digest, settings, written):
    digest = load_digest(write_digest(GOOD.replace("Intro paragraph.", f"Intro {written} paragraph.")), settings)
    assert written in digest.opening.body_html
