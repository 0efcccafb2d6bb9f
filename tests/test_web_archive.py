"""The web archive through Flask's test client: /issues/, /issues/SLUG, /feed.xml, on issues
recorded by real sends (the send library writing to the outbox)."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from email import message_from_bytes, policy

import html5lib
import pytest

from newsletter.archive import LRU, Archive, record_issue
from newsletter.config import Category
from newsletter.digest import load_digest
from newsletter.ledger import Ledger, RunStatus
from newsletter.links import Links
from newsletter.providers import make_provider
from newsletter.render import select
from newsletter.send import Composer, Sender, open_run, possible_variants
from newsletter.subscribers import Consent, ConsentMethod
from newsletter.web import create_app

from .conftest import EXAMPLE, TEST_KEY

ATOM = "{http://www.w3.org/2005/Atom}"
XHTML = "{http://www.w3.org/1999/xhtml}"
KEY = TEST_KEY.encode()


# -- helpers: readers, digests, and real sends ------------------------------------------------------

@pytest.fixture
def readers(web):
    for i, categories in enumerate([(), ("ai-tech",), ("essays",), ("ai-research",), ("ai-tech", "essays")]):
        web.subs.add(f"r{i}@example.com", categories=categories, consent=Consent(ConsentMethod.CLI))


def digest_text(title: str, date: str | None = None, *, dek: str = "", stories=(("A story", None),),
                tldr: str = "") -> str:
    """A small digest: each story (title, categories or None for everyone) cites its own note."""
    def quoted(text: str) -> str:  # a JSON string is a YAML string
        return json.dumps(text, ensure_ascii=False)
    front = [f"title: {quoted(title)}"] + ([f"date: {date}"] if date else [])
    front += [f"subtitle: {quoted(dek)}"] if dek else []
    front += ["tldr:", f"  - {quoted(tldr)}"] if tldr else []
    body = ["Intro paragraph."]
    for n, (story, categories) in enumerate(stories, 1):
        body += [f"## {story}"] + ([f"<!-- categories: {categories} -->"] if categories else [])
        body += [f"The text of {story}.[^n{n}]", "", f"[^n{n}]: [Source {n}](https://example.org/{n})", ""]
    return "---\n" + "\n".join(front) + "\n---\n\n" + "\n".join(body)


@pytest.fixture
def write(tmp_path):
    def write(name: str, text: str):
        path = tmp_path / "digests" / f"{name}.md"
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return path
    return write


def start(web, path, *, again: bool = False, settings=None):
    """Open a run of the digest at `path`, as `newsletter send` does: the issue is recorded."""
    settings = settings or web.settings
    digest = load_digest(path, settings)
    ledger = Ledger(web.subs.engine)
    run, _, variants = open_run(ledger, digest, web.subs, "outbox", settings, again=again)
    return digest, ledger, run, variants


def send(web, path, *, again: bool = False, settings=None):
    """Send the digest at `path` to every due reader, through the outbox, to the end of its run."""
    settings = settings or web.settings
    digest, ledger, run, variants = start(web, path, again=again, settings=settings)
    composer = Composer(settings, digest.slug, variants, view_key=KEY)
    run = Sender(ledger, make_provider(settings), composer, rate=1000.0).send(run)
    assert run.status == RunStatus.FINISHED
    return digest


def page(web, path: str, status: int = 200) -> str:
    answer = web.client.get(path)
    assert answer.status_code == status, (path, answer.status_code)
    return answer.get_data(as_text=True)


def listed(html: str) -> list[str]:
    """The issue slugs the archive page lists, in order."""
    return re.findall(r'<h2><a href="/issues/([^"]+)">', html)


def story_titles(html: str) -> list[str]:
    return [re.sub(r"<[^>]+>", "", t) for t in re.findall(r'<h2 id="[^"]*">(.*?)</h2>', html)]


def parse(html: str):
    return html5lib.parse(html, namespaceHTMLElements=False)


# -- what is in the archive ---------------------------------------------------------------------

def test_an_issue_is_in_the_archive_only_once_a_run_of_it_finished(web, readers, write):
    path = write("2026-05-01-first", digest_text("First", "2026-05-01"))
    not_found = page(web, "/issues/no-such-issue", 404)
    assert page(web, "/issues/2026-05-01-first", 404) == not_found

    digest, ledger, run, _ = start(web, path)  # recorded, but still being sent
    assert page(web, "/issues/2026-05-01-first", 404) == not_found
    assert listed(page(web, "/issues/")) == []
    ledger.cancel(run.id)  # only cancelled
    assert page(web, "/issues/2026-05-01-first", 404) == not_found
    assert "2026-05-01-first" not in page(web, "/feed.xml")

    send(web, path)  # the rest of the readers: this run finishes
    html = page(web, "/issues/2026-05-01-first")
    assert "<h1>First</h1>" in html and "The text of A story." in html
    assert listed(page(web, "/issues/")) == ["2026-05-01-first"]


def test_the_list_is_newest_first_by_date_then_by_last_sending(web, readers, write):
    send(web, write("old", digest_text("Old", "2026-01-10", dek="The oldest one.")))
    send(web, write("march-a", digest_text("March A", "2026-03-01")))
    send(web, write("march-b", digest_text("March B", "2026-03-01")))
    send(web, write("undated", digest_text("Undated")))  # its day is the day it went out: today
    html = page(web, "/issues/")
    assert listed(html) == ["undated", "march-b", "march-a", "old"]
    assert '<time datetime="2026-01-10">January 10, 2026</time>' in html
    assert '<p class="dek">The oldest one.</p>' in html
    assert '<link rel="alternate" type="application/atom+xml" title="Open Models Weekly" href="/feed.xml">' in html
    # Sent again: March A went out last, so it comes before March B, still after the undated one.
    send(web, write("march-a", digest_text("March A", "2026-03-01")), again=True)
    assert listed(page(web, "/issues/")) == ["undated", "march-a", "march-b", "old"]


def test_an_empty_archive_says_so_kindly(web):
    html = page(web, "/issues/")
    assert "No issue has gone out yet" in html and 'href="/subscribe"' in html
    assert "topics-filter" not in html


def test_the_category_filter_lists_what_a_reader_of_that_topic_got(web, readers, write):
    send(web, write("tech", digest_text("Tech", "2026-02-03", stories=[("Chips", "ai-tech")])))
    send(web, write("essays", digest_text("Essays", "2026-02-02", stories=[("On reading", "essays")])))
    send(web, write("everyone", digest_text("For all", "2026-02-01")))  # a story for every reader
    html = page(web, "/issues/")
    assert listed(html) == ["tech", "essays", "everyone"]
    for category in web.settings.categories:  # plain links, no script
        assert f'<a href="/issues/?category={category.slug}"' in html
    assert '<a href="/issues/" aria-current="page">All</a>' in html

    ai_tech = page(web, "/issues/?category=ai-tech")
    assert listed(ai_tech) == ["tech", "everyone"]
    assert 'href="/issues/?category=ai-tech" aria-current="page"' in ai_tech
    assert listed(page(web, "/issues/?category=essays")) == ["essays", "everyone"]
    assert listed(page(web, "/issues/?category=ai-news")) == ["everyone"]

    unknown = page(web, "/issues/?category=no-such-topic", 404)  # an old link: still useful
    assert "There is no such topic" in unknown and listed(unknown) == ["tech", "essays", "everyone"]


# -- an issue's page ------------------------------------------------------------------------------

def test_the_whole_issue_carries_every_story_and_the_emails_notes(web, readers):
    digest = send(web, EXAMPLE)
    answer = web.client.get(f"/issues/{digest.slug}")
    html = answer.get_data(as_text=True)
    assert answer.headers["Cache-Control"] == "public, max-age=300"
    assert story_titles(html) == [s.title_text for s in digest.stories]
    variant = select(digest)
    notes = re.findall(r'<li id="fn-(\d+)" value="\d+"><a href="([^"]+)"', html)
    assert notes == [(str(n.number), n.footnote.url) for n in variant.notes]
    assert f'<link rel="canonical" href="https://newsletter.example.com/issues/{digest.slug}">' in html
    assert "preferences link" not in html
    for piece in ("TL;DR", 'class="pull"', "How the verifier head works", "Round-ups", 'class="img"'):
        assert piece in html, piece


def test_footnote_references_and_back_links_pair_up_both_ways(web, readers):
    digest = send(web, EXAMPLE)
    for path in (f"/issues/{digest.slug}", f"/issues/{digest.slug}?v=" + Links("", KEY).view(digest.slug, "essays")):
        tree = parse(page(web, path))
        ids = [e.get("id") for e in tree.iter() if e.get("id")]
        assert len(ids) == len(set(ids)), "every id once"
        by_id = {e.get("id"): e for e in tree.iter() if e.get("id")}
        refs = [a for sup in tree.iter("sup") if sup.get("class") == "fnref" for a in sup.iter("a")]
        backs = [a for a in tree.iter("a") if a.get("class") == "back"]
        assert refs and backs
        seen = []
        for ref in refs:  # each marker goes to its note, and that note comes back to it
            target = by_id[ref.get("href").removeprefix("#")]
            assert target.tag == "li" and target.get("id") == f"fn-{ref.text}"
            assert f"#{ref.get('id')}" in [a.get("href") for a in target.iter("a") if a.get("class") == "back"]
            seen.append(int(ref.text))
        first_seen = list(dict.fromkeys(seen))
        assert first_seen == list(range(1, len(first_seen) + 1)), "numbered in reading order"
        for back in backs:  # and each back link goes to a marker of its own note
            marker = by_id[back.get("href").removeprefix("#")]
            note = next(li for li in tree.iter("li") if back in list(li.iter("a")))
            assert marker.get("href") == f"#{note.get('id')}"


def test_the_email_and_the_page_number_the_notes_alike(web, readers, renderer):
    digest = send(web, EXAMPLE)
    for key, categories in (("all", None), ("ai-tech", ["ai-tech"])):
        view = "" if key == "all" else "?v=" + Links("", KEY).view(digest.slug, key)
        html = page(web, f"/issues/{digest.slug}{view}")
        email = renderer.render(digest, categories).html
        marker = r'href="#fn-(\d+)" name="(fnref-\d+-\d+)"'
        assert re.findall(marker, html) == re.findall(marker, email)


def test_a_view_link_shows_the_variant_its_reader_got(web, readers, tmp_path):
    digest = send(web, EXAMPLE)
    emails = [message_from_bytes(p.read_bytes(), policy=policy.default) for p in (tmp_path / "outbox").glob("*.eml")]
    email = next(m for m in emails if m["To"] == "r1@example.com")  # ai-tech
    body = email.get_body(("html",)).get_content()
    link = re.search(r'href="https://newsletter\.example\.com(/issues/[^"]+)"[^>]*>View in your browser', body).group(1)
    link = link.replace("&amp;", "&")
    assert link == f"/issues/{digest.slug}?v=" + Links("", KEY).view(digest.slug, "ai-tech")

    answer = web.client.get(link)
    html = answer.get_data(as_text=True)
    assert answer.status_code == 200 and answer.headers["Cache-Control"] == "no-store"
    variant = select(digest, ["ai-tech"])
    assert story_titles(html) == [s.title_text for s in variant.sections if s.kind != "opening"]
    assert len(story_titles(html)) < len(digest.stories)
    notes = re.findall(r'<li id="fn-(\d+)" value="\d+"><a href="([^"]+)"', html)
    assert notes == [(str(n.number), n.footnote.url) for n in variant.notes]
    assert "use the preferences link at the bottom of your email" in html
    reader = web.subs.get("r1@example.com")
    assert reader.token not in html and "/p/" not in html and "/u/" not in html


def test_a_forged_or_mangled_view_shows_the_whole_issue(web, readers, write):
    digest = send(web, EXAMPLE)
    other = send(web, write("other", digest_text("Other", "2026-01-01")))
    whole = story_titles(page(web, f"/issues/{digest.slug}"))
    real = Links("", KEY).view(digest.slug, "ai-tech")
    for view in (real[:-1] + ("A" if real[-1] != "A" else "B"), real[:10], "x" * 22, "é" * 22, real * 10,
                 Links("", KEY).view(other.slug, "ai-tech"), Links("", b"another key" * 4).view(digest.slug, "ai-tech")):
        html = page(web, f"/issues/{digest.slug}?v={view}")
        assert story_titles(html) == whole, view
        assert "preferences link" not in html
    # The view of readers with no categories is the whole issue too, and says where to change it.
    html = page(web, f"/issues/{digest.slug}?v=" + Links("", KEY).view(digest.slug, "all"))
    assert story_titles(html) == whole and "preferences link" in html


def test_a_view_finds_variants_sent_beyond_the_64_checked_ones(web, write, tmp_path):
    """With seven categories in an issue, `possible_variants` stands for the 128 sets with a few:
    a reader's actual set is found among the variants its run sent."""
    slugs = [f"topic-{i}" for i in range(7)]
    settings = web.settings.with_overrides(categories=tuple(Category(s, s.title()) for s in slugs))
    web.subs.sync_categories(settings.categories)
    web.subs.add("two@example.com", categories=["topic-1", "topic-4"], consent=Consent(ConsentMethod.CLI))
    path = write("seven", digest_text("Seven", "2026-06-01", stories=[(f"Story {s}", s) for s in slugs]))
    digest = send(web, path, settings=settings)
    assert "topic-1+topic-4" not in possible_variants(digest)
    app = create_app(settings, subscribers=web.subs, key=KEY)
    answer = app.test_client().get("/issues/seven?v=" + Links("", KEY).view("seven", "topic-1+topic-4"))
    assert story_titles(answer.get_data(as_text=True)) == ["Story topic-1", "Story topic-4"]


def test_pages_without_a_view_may_be_cached_and_others_not(web, readers):
    digest = send(web, EXAMPLE)
    assert web.client.get("/issues/").headers["Cache-Control"] == "public, max-age=300"
    assert web.client.get("/feed.xml").headers["Cache-Control"] == "public, max-age=300"
    assert web.client.get(f"/issues/{digest.slug}?v=forged").headers["Cache-Control"] == "no-store"
    assert "public" not in web.client.get("/issues/unsent").headers.get("Cache-Control", "")
    csp = web.client.get(f"/issues/{digest.slug}").headers["Content-Security-Policy"]
    assert "style-src 'self'" in csp and "unsafe-inline" not in csp


def test_no_inline_style_reaches_the_page(web, readers):
    """The email's HTML styles every link inline; the page's CSP would refuse each one."""
    digest = send(web, EXAMPLE)
    html = page(web, f"/issues/{digest.slug}")
    assert not [e.tag for e in parse(html).iter() if e.get("style") is not None]
    assert 'href="https://arxiv.org/' in html  # the links themselves are all there


# -- what the writer wrote is text ------------------------------------------------------------------

HOSTILE = "<script>alert('x')</script> & \"Ünïcødé\" <b>bold</b> ✓"


def test_a_title_that_looks_like_html_is_shown_as_text(web, readers, write):
    path = write("hostile", digest_text(HOSTILE, "2026-07-01", dek="A dek with <img src=x onerror=alert(1)>")
                 + "\n<script>alert('body')</script>\n<p onclick=\"alert(1)\">Raw paragraph</p>\n")
    send(web, path)
    for html in (page(web, "/issues/hostile"), page(web, "/issues/")):
        assert "<script" not in html and "<img src=x" not in html and "<b>bold</b>" not in html
        assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &#34;Ünïcødé&#34;" in html
    body = page(web, "/issues/hostile")
    assert "onclick" not in body and "Raw paragraph" in body


# -- the feed -----------------------------------------------------------------------------------------

def test_the_feed_is_atom_with_every_field_escaped(web, readers, write, monkeypatch):
    from newsletter.web import archive as web_archive

    monkeypatch.setattr(web_archive, "FEED_ENTRIES", 3)
    for n, day in enumerate(["2026-01-05", "2026-01-12", "2026-01-19"]):
        send(web, write(f"week-{n}", digest_text(f"Week {n}", day, tldr=f"Point {n}.[^n1]")))
    hostile = send(web, write("hostile", digest_text(HOSTILE, "2026-01-26", dek="Dek & <more>")))
    answer = web.client.get("/feed.xml")
    assert answer.headers["Content-Type"] == "application/atom+xml; charset=utf-8"
    root = ET.fromstring(answer.data)
    base = "https://newsletter.example.com"
    assert root.tag == f"{ATOM}feed"
    assert root.findtext(f"{ATOM}id") == f"{base}/issues/"
    assert root.findtext(f"{ATOM}title") == "Open Models Weekly"
    links = {link.get("rel"): link.get("href") for link in root.findall(f"{ATOM}link")}
    assert links == {"self": f"{base}/feed.xml", "alternate": f"{base}/issues/"}
    entries = root.findall(f"{ATOM}entry")
    assert [e.findtext(f"{ATOM}title") for e in entries] == [HOSTILE, "Week 2", "Week 1"]  # newest 3
    assert root.findtext(f"{ATOM}updated") == max(e.findtext(f"{ATOM}updated") for e in entries)
    first = entries[0]
    url = f"{base}/issues/{hostile.slug}"
    assert first.findtext(f"{ATOM}id") == url
    assert first.find(f"{ATOM}link").get("href") == url
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", first.findtext(f"{ATOM}published"))
    assert first.findtext(f"{ATOM}updated") >= first.findtext(f"{ATOM}published")
    assert first.findtext(f"{ATOM}summary") == "Dek & <more>"
    assert entries[1].findtext(f"{ATOM}summary") == "Point 2."  # no dek: the TL;DR, its markers gone
    content = first.find(f"{ATOM}content")
    assert content.get("type") == "html"
    html = parse(content.text)
    assert "The text of A story." in "".join(html.itertext())
    assert not [e for e in html.iter() if e.tag == "script"]
    assert first.get("{http://www.w3.org/XML/1998/namespace}base") == url  # #fn-1 resolves to the page


def test_an_empty_feed_is_still_a_feed(web):
    root = ET.fromstring(web.client.get("/feed.xml").data)
    assert root.findall(f"{ATOM}entry") == [] and root.findtext(f"{ATOM}updated")


# -- the archive needs no digest files ---------------------------------------------------------------

def test_the_archive_renders_from_the_database_without_the_file(web, readers, write, run, db_url, tmp_path,
                                                                monkeypatch):
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", db_url)
    monkeypatch.setenv("NEWSLETTER_OUTBOX_DIR", str(tmp_path / "outbox"))
    path = write("2026-08-01-kept", digest_text("As first sent", "2026-08-01"))
    assert run("send", path, "--yes").code == 0
    path.write_text(digest_text("As sent again", "2026-08-01"), encoding="utf-8")
    result = run("send", path, "--yes", "--again")
    assert result.code == 0, result.err
    path.unlink()
    fresh = create_app(web.settings, subscribers=web.subs, key=KEY).test_client()  # nothing cached
    html = fresh.get("/issues/2026-08-01-kept").get_data(as_text=True)
    assert "<h1>As sent again</h1>" in html
    assert "As sent again" in fresh.get("/feed.xml").get_data(as_text=True)


def test_recording_the_same_text_again_keeps_its_time(web, readers, write):
    path = write("same", digest_text("Same", "2026-09-01"))
    digest = send(web, path)
    archive = Archive(web.subs.engine, web.settings)
    before = archive.issue("same")
    record_issue(web.subs.engine, digest, path.read_bytes())
    assert archive.issue("same").updated_at == before.updated_at
    path.write_text(digest_text("Changed", "2026-09-02"), encoding="utf-8")
    record_issue(web.subs.engine, load_digest(path, web.settings), path.read_bytes())
    after = archive.issue("same")
    assert after.updated_at > before.updated_at and after.title == "Changed"
    assert after.date.isoformat() == "2026-09-02" and after.source == path.read_text(encoding="utf-8")


def test_an_issue_that_no_longer_reads_stays_listed(web, readers, write, caplog):
    """A category removed from the settings after an issue used it: the list keeps the issue, its
    page is the error page, the feed leaves it out, and the log says why."""
    send(web, write("news", digest_text("News", "2026-10-01", stories=[("A headline", "ai-news")])))
    fewer = web.settings.with_overrides(categories=tuple(c for c in web.settings.categories if c.slug != "ai-news"))
    client = create_app(fewer, subscribers=web.subs, key=KEY).test_client()
    assert listed(client.get("/issues/").get_data(as_text=True)) == ["news"]
    assert client.get("/issues/news").status_code == 500
    assert ET.fromstring(client.get("/feed.xml").data).findall(f"{ATOM}entry") == []
    assert "issue news as sent no longer reads" in caplog.text and "ai-news" in caplog.text


def test_parsed_issues_and_pages_are_kept_in_a_bounded_cache(web, readers, write):
    made = []
    cache = LRU(2)
    for key in ("a", "b", "a", "c", "b"):
        cache.get(key, lambda: made.append(key) or key.upper())
    assert made == ["a", "b", "c", "b"] and len(cache) == 2
    digest = send(web, EXAMPLE)
    web.client.get(f"/issues/{digest.slug}")
    shelf = web.app.extensions["archive"]
    assert (digest.slug, shelf.archive.issue(digest.slug).digest_sha256) in shelf.archive.digests._items
