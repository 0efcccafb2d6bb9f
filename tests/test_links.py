"""Reader links: one scheme, built and parsed in one place; the view link carries nothing of the reader."""

from __future__ import annotations

import email
import re
from email import policy
from pathlib import Path

from newsletter.digest import load_digest
from newsletter.links import Links, find_view, parse, view_token
from newsletter.send import possible_variants
from newsletter.subscribers import Consent, ConsentMethod, Subscribers

from .conftest import EXAMPLE, TEST_KEY

KEY = TEST_KEY.encode()
BASE = "https://news.example.com"


def test_every_link_parses_back_to_what_built_it():
    links = Links(BASE + "/", KEY)
    token = "Ab3_-xYz" * 4
    built = links.for_reader("2026-04-22-weekly", token, "ai-tech")
    assert built["unsubscribe_url"] == f"{BASE}/u/{token}"
    assert built["preferences_url"] == f"{BASE}/p/{token}"
    view = view_token(KEY, "2026-04-22-weekly", "ai-tech")
    assert built["browser_url"] == f"{BASE}/issues/2026-04-22-weekly?v={view}"
    assert parse(built["unsubscribe_url"].removeprefix(BASE)) == ("unsubscribe", token)
    assert parse(built["preferences_url"].removeprefix(BASE)) == ("preferences", token)
    assert parse("/issues/2026-04-22-weekly") == ("issue", "2026-04-22-weekly")
    assert parse(links.confirm("signed.part-1").removeprefix(BASE)) == ("confirm", "signed.part-1")
    for foreign in ("/u/", "/x/abc", "/u/a/b", "/u/<script>", "/issues/../etc", "u/abc"):
        assert parse(foreign) is None, foreign


def test_the_view_link_shows_one_variant_and_names_no_reader():
    links = Links(BASE, KEY)
    first = links.for_reader("issue-1", "token-of-ana-" + "a" * 20, "ai-tech")
    second = links.for_reader("issue-1", "token-of-ben-" + "b" * 20, "ai-tech")
    assert first["browser_url"] == second["browser_url"], "the same variant, the same link"
    assert "token-of" not in first["browser_url"]
    other = links.for_reader("issue-1", "token-of-ana-" + "a" * 20, "essays")["browser_url"]
    assert other != first["browser_url"]
    view = first["browser_url"].split("?v=")[1]
    assert find_view(KEY, "issue-1", view, ["all", "essays", "ai-tech"]) == "ai-tech"
    assert find_view(KEY, "issue-2", view, ["all", "essays", "ai-tech"]) is None, "another issue"
    assert find_view(b"another-key-" + b"x" * 32, "issue-1", view, ["ai-tech"]) is None, "forged"
    assert find_view(KEY, "issue-1", "ünïcode", ["ai-tech"]) is None
    assert Links(BASE).for_reader("issue-1", "t" * 32, "ai-tech")["browser_url"] == f"{BASE}/issues/issue-1"


def test_sent_emails_keep_the_readers_token_out_of_the_view_link(run, monkeypatch, tmp_path, session_settings):
    url = f"sqlite:///{tmp_path / 'subscribers.db'}"
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", url)
    monkeypatch.setenv("NEWSLETTER_OUTBOX_DIR", str(tmp_path / "outbox"))
    subs = Subscribers.open(url, session_settings.categories)
    for i, cats in enumerate([(), ("ai-tech",), ("essays", "ai-news")]):
        subs.add(f"r{i}@example.com", categories=cats, consent=Consent(ConsentMethod.CLI))
    tokens = {r.email: r.token for r in subs.iter_readers()}
    subs.close()
    assert run("send", EXAMPLE, "--yes").code == 0
    digest = load_digest(EXAMPLE, session_settings)
    expected = {"r0@example.com": "all", "r1@example.com": "ai-tech", "r2@example.com": "ai-news+essays"}
    for path in sorted(Path(tmp_path / "outbox").glob("*.eml")):
        message = email.message_from_bytes(path.read_bytes(), policy=policy.default)
        reader = message["To"]
        html = message.get_body(("html",)).get_content()
        text = message.get_body(("plain",)).get_content()
        token = tokens.pop(reader)
        assert message["List-Unsubscribe"].strip() == f"<https://newsletter.example.com/u/{token}>"
        for part in (html, text):
            views = re.findall(r"https://newsletter\.example\.com/issues/[^\s\"<>]+", part)
            assert views and all(token not in v and "?r=" not in v for v in views), views
            view = views[0].split("?v=")[1]
            assert find_view(KEY, digest.slug, view, possible_variants(digest)) == expected[reader]
    assert tokens == {}, "every reader got an email"


def test_the_link_scheme_is_spelled_out_in_one_module():
    package = Path(__file__).resolve().parent.parent / "newsletter"
    spelled = [str(p.relative_to(package)) for p in package.rglob("*.py")
               if re.search(r"""["'/]\{?[a-z_.]*\}?/(u|p|issues)/""", p.read_text()) and p.name != "links.py"]
    assert spelled == []
