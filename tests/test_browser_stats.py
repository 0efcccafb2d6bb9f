"""The /stats pages in headless Chromium, from a real server: the writer logs in and reads
the charts on a phone and a desktop, in light and dark."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
import sqlalchemy as sa
from werkzeug.serving import make_server

from newsletter.digest import load_digest
from newsletter.ledger import Ledger, RunStatus
from newsletter.providers import make_provider
from newsletter.send import Composer, Sender, open_run
from newsletter.store import readers, send_runs
from newsletter.subscribers import Consent, ConsentMethod, Subscribers
from newsletter.web import create_app

from .conftest import TEST_KEY
from .test_browser import BACKGROUND, COLOURS, OVERFLOW, browser, contrast, screenshot, show  # noqa: F401
from .test_browser_archive import WATCH_CSP
from .test_stats import ARTICLE, message_ids, report
from .test_web_archive import digest_text

KEY = TEST_KEY.encode()
PASSWORD = "correct horse battery staple"
ISSUES = 3
TOPICS = 5  # four categories and "every story"
# The fill of SVG text, the colour of other text, each against the background it sits on.
TEXT_COLOURS = BACKGROUND + """
return Array.from(document.querySelectorAll(arguments[0])).map(el => {
  const style = getComputedStyle(el), svg = el instanceof SVGElement;
  return [el.tagName + '.' + el.className.baseVal, rgb(svg ? style.fill : style.color), background(el)];
});
"""


@pytest.fixture(scope="module")
def stats_site(tmp_path_factory, session_settings):
    """The reader app under werkzeug on 127.0.0.1: three issues sent through the outbox to twelve
    readers who joined over eight weeks, the provider's reports, and a login."""
    folder = tmp_path_factory.mktemp("stats")
    settings = session_settings.with_overrides(outbox_dir=folder / "outbox")
    subs = Subscribers.open(f"sqlite:///{folder / 'subscribers.db'}", settings.categories, KEY)
    topics = [(), ("ai-tech",), ("essays",), ("ai-research",), ("ai-tech", "ai-news")]
    for i in range(12):
        subs.add(f"r{i}@example.com", categories=topics[i % len(topics)], consent=Consent(ConsentMethod.CLI))
    start = dt.datetime.now(dt.timezone.utc) - dt.timedelta(weeks=8)
    with subs.engine.begin() as conn:
        for i in range(12):
            conn.execute(sa.update(readers).where(readers.c.email == f"r{i}@example.com")
                         .values(created_at=start + dt.timedelta(days=5 * i)))
    ledger = Ledger(subs.engine)
    for n in range(ISSUES):
        path = folder / f"2026-0{n + 3}-01-issue.md"
        path.write_text(digest_text(f"Issue {n + 1}", f"2026-0{n + 3}-01"), encoding="utf-8")
        digest = load_digest(path, settings)
        run, _, variants = open_run(ledger, digest, subs, "outbox", settings)
        composer = Composer(settings, digest.slug, variants, KEY)
        assert Sender(ledger, make_provider(settings), composer, rate=1000.0).send(run).status == RunStatus.FINISHED
        with subs.engine.begin() as conn:
            conn.execute(sa.update(send_runs).where(send_runs.c.id == run.id)
                         .values(created_at=start + dt.timedelta(weeks=2 * n + 2)))
        ids = list(message_ids(subs.engine, digest.slug).values())
        for k, message_id in enumerate(ids):
            report(subs.engine, "bounced" if k == 0 else "delivered", message_id, bounce_type="permanent")
            if k % 2:
                report(subs.engine, "opened", message_id)
            if k % 3 == 1:
                report(subs.engine, "clicked", message_id, link=ARTICLE)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("NEWSLETTER_ADMIN_PASSWORD", PASSWORD)
        app = create_app(settings, subscribers=subs, key=KEY)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", "2026-03-01-issue"
    server.shutdown()
    subs.close()


def test_without_the_login_the_browser_is_asked_for_it_and_sees_no_figures(browser, stats_site):
    """Runs before `admin` logs the shared browser in: the pages answer 401 to a browser too."""
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {}})
    for url in pages(stats_site).values():
        show(browser, url, 1280)
        status = browser.execute_script("return performance.getEntriesByType('navigation')[0].responseStatus")
        assert status == 401
        assert stats_site[1] not in browser.page_source  # no issue named, no figure shown
        assert not browser.find_elements("css selector", "svg, table")


@pytest.fixture(scope="module")
def admin(browser):
    """The browser, logged in (HTTP Basic, sent with every request) and watching for CSP violations."""
    import base64

    browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": WATCH_CSP})
    browser.execute_cdp_cmd("Network.enable", {})
    token = base64.b64encode(f"admin:{PASSWORD}".encode()).decode()
    browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}})
    yield browser
    browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {}})


def pages(site) -> dict[str, str]:
    base, slug = site
    return {"index": f"{base}/stats", "issue": f"{base}/stats/{slug}"}


@pytest.mark.parametrize("dark", [False, True])
def test_the_charts_render_without_any_csp_violation(admin, stats_site, dark):
    show(admin, pages(stats_site)["index"], 1280, dark=dark)
    assert admin.execute_script("return document.querySelector('h1').textContent") == "Stats"
    assert admin.execute_script("return window.cspViolations") == []
    bars = admin.execute_script("return document.querySelectorAll('svg.bars rect.bar-fill').length")
    assert bars == 4 * ISSUES
    assert admin.execute_script("return document.querySelectorAll('svg.lines polyline.line').length") == TOPICS
    # Each bar is as long, within its track, as its share of the most emails sent.
    share = admin.execute_script("""
        const row = document.querySelector('svg.bars .bar-row.delivered');
        return row.querySelector('.bar-fill').getBoundingClientRect().width /
               row.querySelector('.bar-track').getBoundingClientRect().width;""")
    # The newest issue went to the ten readers left after two bounces, nine got it; the first, to twelve.
    assert share == pytest.approx(9 / 12, abs=0.01)
    titled = admin.execute_script("return document.querySelectorAll('svg.chart title').length")
    assert titled >= 4 * ISSUES + TOPICS, "every bar and line has its tooltip"
    for caption in ("bars-caption", "lines-caption"):
        assert admin.execute_script(f"return document.getElementById('{caption}').textContent.length") > 40


@pytest.mark.parametrize("name", ["index", "issue"])
@pytest.mark.parametrize("dark", [False, True])
def test_no_horizontal_overflow_on_a_phone(admin, stats_site, name, dark):
    show(admin, pages(stats_site)[name], 375, dark=dark)
    found = admin.execute_script(OVERFLOW)
    assert found["inner"] == 375 and found["scroll"] <= 375 and found["wide"] == [], found
    assert admin.execute_script("return window.cspViolations") == []


@pytest.mark.parametrize("width", [375, 1280])
@pytest.mark.parametrize("dark", [False, True])
@pytest.mark.parametrize("name", ["index", "issue"])
def test_text_and_charts_are_readable_in_light_and_dark(admin, stats_site, name, dark, width):
    show(admin, pages(stats_site)[name], width, dark=dark)
    card = admin.execute_script("return getComputedStyle(document.querySelector('main')).backgroundColor")
    assert card == ("rgb(28, 30, 34)" if dark else "rgb(255, 255, 255)")
    samples = admin.execute_script(TEXT_COLOURS, "h1, h2, p, th, td, caption, figcaption, li, svg text, .rate")
    assert len(samples) > 20
    assert any(tag.startswith("text.") for tag, _, _ in samples), "the charts' own text is checked too"
    for element, fg, bg in samples:
        assert contrast(fg, bg) >= 4.5, f"{element}: {fg} on {bg} ({'dark' if dark else 'light'})"
    marks = admin.execute_script("""return Array.from(document.querySelectorAll('.bar-fill, polyline.line'))
        .map(el => getComputedStyle(el)[el.tagName === 'rect' ? 'fill' : 'stroke'].match(/\\d+/g).slice(0, 3).map(Number))""")
    background = [int(c) for c in card[4:-1].split(",")]
    assert marks and all(contrast(mark, background) >= 3 for mark in marks), marks  # WCAG's 3:1 for graphics


def test_a_screenshot_of_each_page(admin, stats_site):
    for name, url in pages(stats_site).items():
        for width, dark in ((375, False), (375, True), (1280, False)):
            show(admin, url, width, dark=dark)
            path = screenshot(admin, f"stats-{name}-{width}-{'dark' if dark else 'light'}")
            assert path.stat().st_size > 10_000
