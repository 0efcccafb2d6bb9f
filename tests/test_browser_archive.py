"""The web archive in headless Chromium, from a real server: what a reader of /issues/ sees."""

from __future__ import annotations

import functools
import http.server
import threading

import pytest
from werkzeug.serving import make_server

from newsletter.digest import load_digest
from newsletter.ledger import Ledger, RunStatus
from newsletter.links import Links
from newsletter.providers import make_provider
from newsletter.send import Composer, Sender, open_run
from newsletter.subscribers import Consent, ConsentMethod, Subscribers
from newsletter.web import create_app

from .conftest import EXAMPLE, TEST_KEY
from .test_browser import COLOURS, OVERFLOW, browser, contrast, png, screenshot, show  # noqa: F401

KEY = TEST_KEY.encode()
IMAGE = "https://newsletter.example.com/images/2026-04-22/kv-cache-chart.png"
# Installed before any page's own content: every CSP violation the page causes is kept.
WATCH_CSP = """
window.cspViolations = [];
document.addEventListener('securitypolicyviolation', e =>
  window.cspViolations.push(e.violatedDirective + ' ' + (e.blockedURI || '') + ' ' + (e.sample || '')));
"""


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """The example's chart, served over loopback (the browser has no network)."""
    root = tmp_path_factory.mktemp("images")
    (root / "kv-cache-chart.png").write_bytes(png(1200, 600))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def archive_site(tmp_path_factory, session_settings, images):
    """The reader app under werkzeug on 127.0.0.1, with the example issue sent to three readers."""
    folder = tmp_path_factory.mktemp("archive")
    settings = session_settings.with_overrides(outbox_dir=folder / "outbox")
    subs = Subscribers.open(f"sqlite:///{folder / 'subscribers.db'}", settings.categories, KEY)
    for i, categories in enumerate([(), ("ai-tech",), ("essays",)]):
        subs.add(f"r{i}@example.com", categories=categories, consent=Consent(ConsentMethod.CLI))
    path = folder / EXAMPLE.name
    path.write_text(EXAMPLE.read_text(encoding="utf-8").replace(IMAGE, f"{images}/kv-cache-chart.png"),
                    encoding="utf-8")
    digest = load_digest(path, settings)
    ledger = Ledger(subs.engine)
    run, _, variants = open_run(ledger, digest, subs, "outbox", settings)
    composer = Composer(settings, digest.slug, variants, KEY)
    assert Sender(ledger, make_provider(settings), composer, rate=1000.0).send(run).status == RunStatus.FINISHED
    server = make_server("127.0.0.1", 0, create_app(settings, subscribers=subs, key=KEY), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", digest.slug
    server.shutdown()
    subs.close()


@pytest.fixture(scope="module")
def watched(browser):
    browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": WATCH_CSP})
    return browser


def pages(site) -> dict[str, str]:
    base, slug = site
    return {"issue": f"{base}/issues/{slug}",
            "view": f"{base}/issues/{slug}?v=" + Links("", KEY).view(slug, "ai-tech"),
            "index": f"{base}/issues/"}


@pytest.mark.parametrize("name", ["issue", "view", "index"])
@pytest.mark.parametrize("dark", [False, True])
def test_no_content_security_policy_violation(watched, archive_site, name, dark):
    show(watched, pages(archive_site)[name], 375, dark=dark)
    assert watched.execute_script("return window.cspViolations") == []
    loaded = watched.execute_script("return getComputedStyle(document.body).backgroundColor")
    assert loaded == ("rgb(16, 17, 20)" if dark else "rgb(244, 242, 238)"), "web.css applies"


@pytest.mark.parametrize("name", ["issue", "view", "index"])
def test_no_horizontal_overflow_on_a_phone(watched, archive_site, name):
    show(watched, pages(archive_site)[name], 375)
    found = watched.execute_script(OVERFLOW)
    assert found["inner"] == 375 and found["scroll"] <= 375 and found["wide"] == [], found
    if name == "issue":
        natural, shown = watched.execute_script(
            "const i = document.querySelector('img.img'); return [i.naturalWidth, i.getBoundingClientRect().width]")
        assert natural == 1200, "the chart loaded"
        assert 300 <= shown <= 375 - 2 * 18, "and fits the column"
    screenshot(watched, f"archive-{name}-375")


def test_a_footnote_marker_jumps_to_its_note_and_back(watched, archive_site):
    show(watched, pages(archive_site)["issue"], 375)
    ref = watched.find_elements("css selector", "sup.fnref a")[5]
    number = ref.text
    watched.execute_script("arguments[0].scrollIntoView(); window.scrollBy(0, -300)", ref)
    ref.click()
    note = watched.find_element("id", f"fn-{number}")
    top = watched.execute_script("return arguments[0].getBoundingClientRect().top", note)
    assert -2 <= top < 100, "the note is at the top of the screen"
    assert watched.execute_script("return location.hash") == f"#fn-{number}"
    back = note.find_element("css selector", f"a.back[href='#{ref.get_attribute('id')}']")
    back.click()
    top = watched.execute_script("return arguments[0].getBoundingClientRect().top", ref)
    assert -2 <= top < 100, "the back link returns to the marker"


@pytest.mark.parametrize("dark", [False, True])
@pytest.mark.parametrize("name", ["issue", "view", "index"])
def test_text_stays_readable_in_light_and_dark(watched, archive_site, name, dark):
    show(watched, pages(archive_site)[name], 1280, dark=dark)
    samples = watched.execute_script(COLOURS, "h1, h2, h3, p, li, a, time, .source, .domain, .note-quote, sup a, "
                                              ".masthead, .byline, .tldr-label, blockquote, code, .notice")
    assert len(samples) > (50 if name != "index" else 8)
    card = watched.execute_script("return getComputedStyle(document.querySelector('main')).backgroundColor")
    assert card == ("rgb(28, 30, 34)" if dark else "rgb(255, 255, 255)")
    for element, fg, bg in samples:
        assert contrast(fg, bg) >= 4.5, f"{element}: {fg} on {bg} ({'dark' if dark else 'light'} mode)"
    if name == "issue":
        screenshot(watched, f"archive-issue-1280-{'dark' if dark else 'light'}")


def test_the_page_is_about_680_pixels_wide_on_a_desktop(watched, archive_site):
    show(watched, pages(archive_site)["issue"], 1280)
    width = watched.execute_script("return document.querySelector('main').getBoundingClientRect().width")
    assert width == 680
    screenshot(watched, "archive-issue-1280")
