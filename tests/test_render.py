"""The example digest's email: footnotes, variants, plain text, size, and what a client needs."""

import re
import textwrap

import html5lib
import pytest
from lxml import html as lxml_html

from newsletter.digest import load_digest
from newsletter.render import PLACEHOLDERS, Renderer, personalize, select

from .conftest import EXAMPLE

VARIANTS = [None, ["ai-research"], ["ai-tech"], ["ai-news"], ["essays"], ["ai-tech", "essays"], []]


def expected_notes(source: str, categories):
    """Independently of the parser: the note URLs a variant should list, in first-citation order."""
    front, body = source.split("\n---\n", 1)
    definitions = dict(re.findall(r"^\[\^([^\]]+)\]: \[[^\]]*\]\(([^)]+)\)", body, re.M))
    body = re.sub(r"^\[\^[^\]]+\]:.*(\n    .*)*", "", body, flags=re.M)
    sections = re.split(r"^## ", body, flags=re.M)
    kept, dropped = [], set()
    for section in sections:
        found = re.search(r"<!-- categories: (.*?) -->", section)
        cats = {c.strip() for c in found.group(1).split(",")} if found else None
        labels = re.findall(r"\[\^([^\]]+)\]", section)
        if categories is None or cats is None or cats & set(categories):
            kept += labels
        else:
            dropped |= set(labels)
    order = []
    for line in re.findall(r'^  - "(.*)"$', front, re.M):  # a TL;DR line goes with the stories it cites
        labels = re.findall(r"\[\^([^\]]+)\]", line)
        if not labels or any(label in kept or label not in dropped for label in labels):
            order += labels
    return [definitions[label] for label in dict.fromkeys(order + kept)]


def graph(page: str):
    tree = lxml_html.fromstring(page)
    refs = tree.xpath("//sup[@class='fnref']/a")
    notes = tree.xpath("//div[@class='note']")
    return tree, refs, notes


@pytest.fixture(scope="module")
def source():
    return EXAMPLE.read_text(encoding="utf-8")


@pytest.mark.parametrize("categories", VARIANTS)
def test_every_reference_links_to_its_note_and_back(renderer, example, source, categories):
    email = renderer.render(example, categories)
    tree, refs, notes = graph(email.html)
    expected = expected_notes(source, categories)
    assert [n.xpath("string(a[not(@name)][1]/@href)") for n in notes] == expected
    assert len(notes) == len(email.variant.notes)

    first_seen = list(dict.fromkeys(int(a.text) for a in refs))
    assert first_seen == list(range(1, len(expected) + 1)), "numbered in order of first citation"
    by_number: dict[int, list[str]] = {}
    for a in refs:
        assert a.get("id") == a.get("name"), "reference anchors carry name and id"
        assert a.get("href") == f"#fn-{a.text}"
        assert a.get("aria-label") == f"Note {a.text}", "a screen reader says what the number is"
        by_number.setdefault(int(a.text), []).append(a.get("id"))
    assert len({a.get("id") for a in refs}) == len(refs), "reference ids are unique"

    for number, note in enumerate(notes, 1):
        target = note.xpath("a[1]")[0]
        assert target.get("name") == target.get("id") == f"fn-{number}"
        assert note.xpath("string(b)") == f"{number}."
        backrefs = [a.get("href") for a in note.xpath(".//a[@class='back']")]
        assert backrefs == [f"#{i}" for i in by_number[number]], f"note {number} links back to each citation"
        labels = [a.get("aria-label") for a in note.xpath(".//a[@class='back']")]
        count = len(backrefs)
        assert labels == [f"Back to reference {i} of {count}" for i in range(1, count + 1)]
        assert note.xpath("string(span[@class='domain'])") in note.xpath("string(a[2]/@href)")


def test_notes_follow_the_story_that_first_cites_them(renderer, example):
    tree, refs, notes = graph(renderer.render(example).html)
    first_ref = {}
    for a in refs:
        first_ref.setdefault(a.text, a)
    for number, note in enumerate(notes, 1):
        block = note.xpath("ancestor::td[contains(@class, 'copy')][1]")[0]
        cited = first_ref[str(number)].xpath("ancestor::td[contains(@class, 'copy')][1]")[0]
        assert block is cited, f"note {number} sits in the block that first cites it"
    # the opening, the three stories and the round-ups each first cite some notes
    assert len(tree.xpath("//div[@class='notes']")) == 5


def test_notes_at_the_end(tmp_path, settings, renderer):
    text = EXAMPLE.read_text(encoding="utf-8").replace("footnotes: inline", "footnotes: end")
    path = tmp_path / "end.md"
    path.write_text(text, encoding="utf-8")
    tree, refs, notes = graph(renderer.render(load_digest(path, settings)).html)
    lists = tree.xpath("//div[@class='notes']")
    assert len(lists) == 1 and len(notes) == 18
    document_order = list(tree.iter())
    assert document_order.index(refs[-1]) < document_order.index(lists[0]), "notes come last"


def test_category_variants_keep_their_stories(renderer, example):
    full = renderer.render(example)
    tech = renderer.render(example, ["ai-tech"])
    assert "RCLA promises a sixfold smaller KV cache" in tech.html
    assert "Lemma-7B learns when to stop trusting" not in tech.html
    assert "Open weights, fine print" not in tech.html
    for kept in ("TL;DR", "Three of this week", "Round-ups"):
        assert kept in tech.html, "intro, TL;DR and round-ups stay for every reader"
    assert len(tech.variant.notes) < len(full.variant.notes)
    assert "AI Tech" in tech.html and "AI Research ·" not in tech.html  # the masthead's categories


def test_same_variant_same_bytes(session_settings, example, renderer):
    fresh = Renderer(session_settings)
    for categories in (None, ["ai-tech"], ["essays", "ai-research"]):
        first = renderer.render(example, categories)
        again = fresh.render(example, list(reversed(categories)) if categories else None)
        assert first.html == again.html and first.text == again.text


def test_plain_text_carries_every_source_url(renderer, example, source):
    for categories in VARIANTS:
        email = renderer.render(example, categories)
        urls = expected_notes(source, categories)
        for number, url in enumerate(urls, 1):
            assert url in email.text
            assert f"[{number}]" in email.text
        assert f"[{len(urls) + 1}]" not in email.text
        assert "\x02" not in email.text and "<p>" not in email.text
    text = renderer.render(example).text
    story = text.index("LEMMA-7B LEARNS WHEN TO STOP")
    next_story = text.index("RCLA PROMISES A SIXFOLD")
    assert "Notes:" in text[story:next_story], "each story's notes follow it"


def test_html_is_a_complete_offline_email(renderer, example):
    page = renderer.render(example).html
    assert page.lower().startswith("<!doctype html>")
    assert re.search(r'<meta name="viewport" content="width=device-width', page)
    assert "<link" not in page.lower() and "@import" not in page
    assert "fonts.googleapis" not in page and "@font-face" not in page
    assert 'http-equiv="Content-Type"' in page
    html5lib.HTMLParser(strict=True).parse(page)  # raises on a parse error
    assert re.search(r"prefers-color-scheme: ?dark", page) and "[data-ogsc]" in page
    assert "max-width:100%" in page.replace(" ", "")  # images scale down
    assert 'height="auto"' not in page, "not a valid value of the height attribute"
    images = lxml_html.fromstring(page).xpath("//img")
    assert images and all(img.get("width", "").isdigit() for img in images), "Outlook needs a width in pixels"


def test_outlook_for_windows_gets_boxes_it_can_draw(renderer, example):
    """Outlook for Windows ignores padding on a div and draws no border wider than 8 px."""
    tree = lxml_html.fromstring(renderer.render(example).html)
    boxes = tree.xpath("//*[contains(concat(' ', @class, ' '), ' tldr ')]")
    assert len(boxes) == 4, "the opening's and each story's TL;DR"
    for box in boxes:
        assert box.tag == "td" and "padding:" in box.get("style", ""), "the TL;DR's padding is on a table cell"
    widths = [int(w) for style in tree.xpath("//@style")
              for w in re.findall(r"border(?:-(?:top|bottom|left|right))?(?:-width)?:\s*(\d+)px", style)]
    assert widths and max(widths) <= 8, f"borders of {sorted(set(widths))} px"


def test_size_of_the_long_digest(renderer, example):
    email = renderer.render(example)
    assert len(EXAMPLE.read_bytes()) > 20_000 and len(example.footnotes) == 18
    assert email.size <= 70 * 1024, f"{email.size} bytes"
    assert email.warnings() == []


FILLER = "\u034f\u200c\u00a0"  # &#847;&zwnj;&nbsp;: nothing a reader sees, yet text to an inbox


def preheader(page: str):
    """The hidden preview text: the first element of the body with any text in it."""
    body = lxml_html.fromstring(page).body
    return next(e for e in body.iter() if (e.text or "").strip())


def test_preheader_comes_from_the_preheader_or_the_dek(tmp_path, settings, renderer):
    email = renderer.render(load_digest(EXAMPLE, settings))
    assert preheader(email.html).text.startswith("A self-checking 7B prover")
    no_preheader = tmp_path / "dek.md"
    no_preheader.write_text(re.sub(r"^preheader:.*\n", "", EXAMPLE.read_text(), flags=re.M))
    email = renderer.render(load_digest(no_preheader, settings))
    assert email.preheader.startswith("An open prover that learns")
    assert preheader(email.html).text.startswith("An open prover that learns")


def test_preheader_is_hidden_everywhere_and_padded(renderer, example):
    """Hidden by display (and mso-hide for Outlook), never by a colour like the background, which
    spam filters score; invisible filler keeps inboxes from adding body text to the preview."""
    hidden = preheader(renderer.render(example).html)
    style = hidden.get("style").replace(" ", "")
    for rule in ("display:none", "mso-hide:all", "max-height:0", "overflow:hidden"):
        assert rule in style
    assert "color" not in style and "font-size" not in style, "no colour trick, no tiny font"
    text = hidden.text_content()
    assert text.startswith(example.preheader)
    filler = text[len(example.preheader):]
    assert len(filler) >= 120 and filler == FILLER * (len(filler) // 3)


def test_head_css_can_be_included_as_it_is():
    """MJML reads a `<` inside mj-style as a tag, even in a CSS comment: a writer's template may
    include dark.css without the compact_css filter."""
    from newsletter.render import default_templates_dir

    assert "<" not in (default_templates_dir() / "email" / "dark.css").read_text()


def test_dates_and_addresses_are_not_made_links_by_mail_apps(renderer, example):
    page = renderer.render(example).html
    tree = lxml_html.fromstring(page)
    assert tree.xpath("//meta[@name='format-detection']/@content") == [
        "telephone=no,date=no,address=no,email=no,url=no"]
    assert tree.body.get("id") == "body", "Gmail keeps the id of <body>: u + #body"
    head_css = "".join(tree.xpath("//head/style/text()"))
    for selector in ("a[x-apple-data-detectors]", "#MessageViewBody a", "u + #body a"):
        assert selector + "{color:inherit" in head_css, selector


def test_footer_links_are_placeholders_until_personalized(renderer, example, session_settings):
    email = renderer.render(example)
    for marker in PLACEHOLDERS.values():
        assert marker in email.html and marker in email.text
    assert session_settings.postal_address in email.html
    links = {"unsubscribe_url": "https://n.example/u/tok", "preferences_url": "https://n.example/p/tok",
             "browser_url": "https://n.example/issues/x"}
    page = personalize(email.html, links)
    assert "%%" not in page
    tree = lxml_html.fromstring(page)
    assert tree.xpath("//a[text()='Unsubscribe']/@href") == ["https://n.example/u/tok"]


def test_empty_category_set_keeps_only_shared_sections(example):
    variant = select(example, [])
    assert [s.kind for s in variant.sections] == ["opening", "roundups"]


def test_text_is_escaped_in_html(write_digest, settings, renderer):
    from .test_digest import GOOD
    text = GOOD.replace("title: A small issue", "title: 'AT&T <b>ships</b> \"quotes\"'")
    email = renderer.render(load_digest(write_digest(text), settings))
    assert "AT&amp;T &lt;b&gt;ships&lt;/b&gt;" in email.html
    assert "<b>ships</b>" not in email.html
    assert email.subject == 'AT&T <b>ships</b> "quotes"'
    assert 'AT&T <b>ships</b> "quotes"' in email.text


# -- anchors: unique, and with `name` where Gmail and Outlook look for it ------------------------

COLLIDING = """
---
title: Colliding anchors
categories: [ai-research]
---

Intro citing a note.[^a]

## fn 1
Cites[^a] and[^b] twice.[^a]

## fnref 1 1
Text.[^b]

## FN
Text.

## FN
Text.

## Same
Text.

## Same
Text.

## Same 2
Text.

## fnref-2-1
<!-- categories: ai-tech -->
Text.[^c]

## Round-ups

### An item
Text.

[^a]: [A](https://a.example.org)
[^b]: [B](https://b.example.org)
[^c]: [C](https://c.example.org)
"""


def anchors(page: str) -> tuple[list[str], set[str]]:
    """Every anchor target of the email (one per element) and every in-page link."""
    tree = lxml_html.fromstring(page)
    targets = []
    for element in tree.xpath("//*[@id or @name]"):
        names = {element.get("id"), element.get("name")} - {None}
        assert len(names) == 1, f"name and id differ: {names}"
        targets += names
    return targets, {a.get("href")[1:] for a in tree.xpath("//a[starts-with(@href, '#')]")}


@pytest.mark.parametrize("categories", [None, ["ai-research"], ["ai-tech"], []])
def test_every_anchor_is_unique(write_digest, settings, renderer, categories):
    digest = load_digest(write_digest(COLLIDING), settings)
    assert [s.anchor for s in digest.stories] == [
        "story-fn-1", "story-fnref-1-1", "story-fn", "story-fn-2", "same", "same-2", "same-2-2",
        "story-fnref-2-1", "round-ups"]
    targets, links = anchors(renderer.render(digest, categories).html)
    assert len(targets) == len(set(targets)), sorted(t for t in targets if targets.count(t) > 1)
    assert links <= set(targets), "every in-page link has its target"


@pytest.mark.parametrize("categories", VARIANTS)
def test_story_headings_carry_name_and_id(renderer, example, categories):
    email = renderer.render(example, categories)
    tree = lxml_html.fromstring(email.html)
    headed = [s for s in email.variant.sections if s.kind in ("story", "roundups")]
    assert headed
    for section in headed:
        target = tree.xpath(f"//h2/a[@name='{section.anchor}'][@id='{section.anchor}']")
        assert len(target) == 1, f"{section.anchor}: Gmail and Outlook jump only to <a name>"


# -- the plain-text part's layout -----------------------------------------------------------------

def reader_links(issue: str) -> dict[str, str]:
    """Links as long as a real reader's (a 43-character token), to fill a rendered variant."""
    token = "t" * 43
    return {"unsubscribe_url": f"https://newsletter.example.com/u/{token}",
            "preferences_url": f"https://newsletter.example.com/p/{token}",
            "browser_url": f"https://newsletter.example.com/issues/{issue}"}


@pytest.mark.parametrize("categories", VARIANTS)
def test_plain_text_lines_fit_78_columns(renderer, example, categories):
    text = personalize(renderer.render(example, categories).text, reader_links(example.slug))
    too_long = [line for line in text.splitlines() if len(line) > 78 and len(line.split()) > 1]
    assert too_long == [], "only a single unbreakable word (a URL) may pass 78 columns"
    assert max(len(line) for line in text.splitlines()) > 70, "lines are filled, not cut short"


LONG_LABELS = (
    "Sparse attention has been promising long contexts for years, and this retrofit finally delivers "
    "on modest hardware according to the authors[^a-very-long-footnote-label-for-the-rcla-paper] while "
    "the benchmark numbers hold up under independent replication by a second lab"
    "[^another-remarkably-long-label-naming-the-replication-study] and the code is public.")


def test_references_with_long_labels_wrap_as_their_numbers(write_digest, settings, renderer):
    source = f"""---
title: Long labels
---

## A story

{LONG_LABELS}

[^a-very-long-footnote-label-for-the-rcla-paper]: [RCLA](https://arxiv.org/abs/2604.10452)
[^another-remarkably-long-label-naming-the-replication-study]: [Replication](https://example.org/r)
"""
    text = renderer.render(load_digest(write_digest(source), settings)).text
    numbered = re.sub(r"\[\^a-very[^\]]*\]", "[1]", re.sub(r"\[\^another[^\]]*\]", "[2]", LONG_LABELS))
    expected = textwrap.fill(numbered, 78, break_long_words=False, break_on_hyphens=False)
    assert expected in text


def test_notes_are_apart_and_show_their_source_once(renderer, example):
    text = renderer.render(example).text
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if re.match(r"\[\d+\] ", line)]
    assert len(starts) == len(example.footnotes)
    assert all(lines[i - 1] == "" for i in starts), "a blank line before every note"
    for i in starts:
        assert lines[i + 1].startswith("    http"), "the URL follows the source title"
        domain = re.sub(r"https?://(www\.)?", "", lines[i + 1].strip()).split("/")[0]
        assert domain not in lines[i], "the domain is in the URL; the title line does not repeat it"
    assert "[12] General-Purpose AI Code of Practice: open release provisions\n" \
           "    https://digital-strategy.ec.europa.eu/" in text


def test_hyphenated_words_are_never_split(write_digest, settings, renderer, example):
    words = ["state-of-the-art", "mixture-of-experts", "long-context", "off-the-shelf", "well-known"]
    paragraph = " ".join(f"An {w} claim, and then some more words to push the line along." for w in words * 4)
    source = f"---\ntitle: Hyphens\ntldr:\n  - \"{paragraph}\"\n---\n\n{paragraph}\n"
    for text in (renderer.render(load_digest(write_digest(source), settings)).text,
                 renderer.render(example).text):
        assert not [line for line in text.splitlines() if re.search(r"\w-$", line)], \
            "no line ends inside a hyphenated word"
    text = renderer.render(load_digest(write_digest(source), settings)).text
    assert text.count("mixture-of-experts") == 8


# -- spam filters: SpamAssassin's local rules on a message as the outbox writes it ----------------

def spamassassin(message: bytes, home) -> tuple[float, dict[str, float]]:
    """SpamAssassin's score for `message` and the points of each rule it hit (local rules only)."""
    import shutil
    import subprocess

    if not shutil.which("spamassassin"):
        pytest.skip("SpamAssassin is not installed (Debian package spamassassin; scripts/test.sh installs it)")
    done = subprocess.run(["spamassassin", "-L", "-t"], input=message, capture_output=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "HOME": str(home)})
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    report = done.stdout.decode(errors="replace")
    score = float(re.search(r"^X-Spam-Status: \w+, score=(-?[\d.]+)", report, re.M).group(1))
    table = report.split("---- ---------------------- ", 1)[1]
    return score, {rule: float(points) for points, rule in re.findall(r"^\s*(-?\d+\.\d+) ([A-Z0-9_]+)", table, re.M)}


@pytest.mark.parametrize("kind", ["issue", "confirmation"])
def test_spamassassin_finds_nothing_wrong_with_the_html(run, tmp_path, monkeypatch, kind):
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", f"sqlite:///{tmp_path / 'subscribers.db'}")
    monkeypatch.setenv("NEWSLETTER_OUTBOX_DIR", str(tmp_path / "outbox"))
    assert run("subscribers", "add", "reader@example.com").code == 0
    if kind == "issue":
        done = run("send", EXAMPLE, "--yes")
    else:
        assert run("subscribers", "remove", "reader@example.com").code == 0
        done = run("subscribers", "resubscribe", "reader@example.com")
    assert done.code == 0, done.err
    [message] = (tmp_path / "outbox").glob("*.eml")
    score, rules = spamassassin(message.read_bytes(), tmp_path)
    print(f"SpamAssassin, {kind}: score {score}, rules {rules}")
    assert "HTML_FONT_LOW_CONTRAST" not in rules, "text coloured like its background"
    assert {rule: points for rule, points in rules.items() if rule.startswith("HTML_") and points} == {}
    assert score <= 0.5, rules


@pytest.mark.parametrize("html", [
    '<a id="one" name="one">', '\tid="tab"', 'id="at-start"', '<p data-xid="no id="yes"">',
    '<p id="">', ' id="a" id="b"', '\u00a0id="nbsp"', '<a\nid="newline">', 'x id="open',
])
def test_the_anchor_pattern_finds_what_the_plain_one_does(html):
    """check_whole's pattern is written to be fast; it must find the same anchors."""
    from newsletter.render import ANCHOR_RE
    assert ANCHOR_RE.findall(html) == re.findall(r'\sid="([^"]+)"', html)


def test_both_emails_draw_the_page_with_the_one_layout(renderer, example, monkeypatch, settings):
    """The page width and gutters come from render.LAYOUT for the digest and the confirmation email."""
    import newsletter.render as render_module
    import newsletter.signups as signups_module
    from newsletter.render import Layout

    narrow = Layout(width=600, gutter=20)
    monkeypatch.setattr(render_module, "LAYOUT", narrow)
    monkeypatch.setattr(signups_module, "LAYOUT", narrow)
    context = {"settings": settings, "name": "", "link": "https://example.org/c/x", "hours": 48, "topics": [],
               "layout": signups_module.LAYOUT}
    for source in (renderer.mjml(select(example, None)),
                   renderer.env.get_template("email/confirm.mjml").render(context)):
        html = renderer.compile(source)
        assert "max-width:600px" in html.replace(" ", "") and "max-width:640px" not in html.replace(" ", "")
        assert "padding:0 20px" in html or "padding:0px 20px" in html
