"""A reader's whole way, in headless Chromium against a real `newsletter serve`: sign up through the
form, confirm from the outbox email, change the categories from a later issue's preferences link,
then unsubscribe with the button. The store is checked after each step."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from email import message_from_bytes, policy
from pathlib import Path

import pytest

from newsletter.subscribers import Status, Subscribers

from .conftest import EXAMPLE, ROOT, TEST_KEY, Server, free_port
from .test_browser import COLOURS, OVERFLOW, browser, contrast, screenshot, show  # noqa: F401
from .test_browser_archive import WATCH_CSP

ADDRESS = "new.reader@example.org"
FOCUS = """
const el = document.querySelector(arguments[0]);
el.focus();
const s = getComputedStyle(el);
const found = [s.outlineStyle, s.outlineWidth];
el.blur();
return found;
"""


@pytest.fixture(scope="module")
def app_server(tmp_path_factory, session_settings):
    folder = tmp_path_factory.mktemp("reader")
    url = f"sqlite:///{folder / 'subscribers.db'}"
    Subscribers.open(url, session_settings.categories, TEST_KEY.encode()).close()  # `db upgrade`
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env |= {"NEWSLETTER_CONFIG": str(ROOT / "newsletter.toml"), "NEWSLETTER_DATABASE_URL": url,
            "NEWSLETTER_SECRET_KEY": TEST_KEY, "NEWSLETTER_OUTBOX_DIR": str(folder / "outbox"),
            "NEWSLETTER_BASE_URL": f"http://127.0.0.1:{port}"}
    server = Server(env, "--port", str(port))
    assert server.url == f"http://127.0.0.1:{port}"
    yield server, env, folder, url
    server.stop()


@pytest.fixture(scope="module")
def watched(browser):
    browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": WATCH_CSP})
    return browser


def reader(url, settings):
    subs = Subscribers.open(url, settings.categories, TEST_KEY.encode())
    try:
        return subs.get(ADDRESS)
    finally:
        subs.close()


def emails(folder: Path, subject_part: str):
    found = []
    for path in sorted((folder / "outbox").glob("*.eml")):
        message = message_from_bytes(path.read_bytes(), policy=policy.default)
        if subject_part in message["Subject"] and message["To"] == ADDRESS:
            found.append(message)
    return found


def link(message, pattern: str) -> str:
    html = message.get_body(("html",)).get_content()
    match = re.search(rf'href="(http://127\.0\.0\.1:\d+/{pattern}/[^"]+)"', html)
    assert match, f"no /{pattern}/ link in the email"
    return match.group(1).replace("&amp;", "&")


def press(driver, selector: str) -> None:
    """Press a submit button and wait (with a deadline) until the next page has loaded.

    The page is marked before the press and the wait is for a document without the mark, asked
    of the page itself: chromedriver's own element handles (a stale-element check, a native
    click) now and then fail with "node does not belong to the document" while a form submits,
    and a retried click could submit the form twice. The button is pressed from the page's own
    script, which runs the same activation (form validation, submission) a click does.
    """
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    driver.execute_script("window.beforePress = true")
    pressed = driver.execute_script(
        "const b = document.querySelector(arguments[0]); if (!b) return false; b.click(); return true",
        selector)
    assert pressed, f"no {selector} on the page"

    def next_page(d) -> bool:
        try:
            return d.execute_script(
                "return window.beforePress === undefined && document.readyState === 'complete'")
        except WebDriverException:  # asked while the old document was going away
            return False

    WebDriverWait(driver, 30).until(next_page, f"no new page after pressing {selector}")


def check_page(driver, name: str) -> None:
    """What every page must be: no CSP violation, no sideways scrolling at 375 px, text with a
    contrast of 4.5 or more in light and dark mode, a visible focus outline; screenshots."""
    url = driver.current_url
    assert driver.execute_script("return window.cspViolations") == [], name
    for dark in (False, True):
        show(driver, url, 375, dark=dark)
        found = driver.execute_script(OVERFLOW)
        assert found["scroll"] <= 375 and found["wide"] == [], (name, found)
        for element, fg, bg in driver.execute_script(COLOURS, "h1, p, label, legend, a, button, .hint"):
            assert contrast(fg, bg) >= 4.5, f"{name}: {element} {fg} on {bg} ({'dark' if dark else 'light'})"
        style, width = driver.execute_script(FOCUS, "main button, main a, footer.site a")
        assert style != "none" and width != "0px", f"{name}: no focus outline"
        screenshot(driver, f"reader-{name}-375-{'dark' if dark else 'light'}")
    show(driver, url, 1280)
    screenshot(driver, f"reader-{name}-1280")
    show(driver, url, 375)


def test_sign_up_confirm_choose_categories_and_unsubscribe(watched, app_server, session_settings):
    driver = watched
    server, env, folder, url = app_server

    # 1. The signup form.
    show(driver, f"{server.url}/subscribe", 375)
    check_page(driver, "subscribe")
    driver.find_element("id", "email").send_keys(ADDRESS)
    driver.find_element("id", "name").send_keys("Nora <b>New</b>")
    driver.find_element("css selector", "label[for=scope-some]").click()
    driver.find_element("css selector", "label[for=cat-ai-tech]").click()
    press(driver, "button[type=submit]")
    assert "Check your inbox" in driver.page_source
    check_page(driver, "subscribe-sent")
    stored = reader(url, session_settings)
    assert stored.status == Status.PENDING and stored.name == "Nora <b>New</b>"

    # 2. The confirmation email in the outbox, and its link.
    (confirmation,) = emails(folder, "onfirm")
    driver.get(link(confirmation, "confirm"))
    assert reader(url, session_settings).status == Status.PENDING, "opening the link changes nothing"
    check_page(driver, "confirm")
    press(driver, "button[type=submit]")
    assert "Nora &lt;b&gt;New&lt;/b&gt;" in driver.page_source or "Nora" not in driver.page_source
    check_page(driver, "confirmed")
    stored = reader(url, session_settings)
    assert stored.status == Status.ACTIVE and stored.categories == ("ai-tech",)
    assert stored.consent_method == "form" and stored.consent_ip == "127.0.0.1"

    # 3. A later issue, sent for real to the outbox; its preferences link.
    sent = subprocess.run([sys.executable, "-m", "newsletter", "send", str(EXAMPLE), "--yes"], env=env,
                          capture_output=True, text=True, timeout=180)
    assert sent.returncode == 0, sent.stderr
    (issue,) = emails(folder, "Lemma")
    driver.get(link(issue, "p"))
    check_page(driver, "preferences")
    assert driver.find_element("id", "cat-ai-tech").is_selected()
    driver.find_element("css selector", "label[for=cat-essays]").click()
    press(driver, "button[value=save]")
    assert "Your preferences are saved" in driver.page_source
    assert reader(url, session_settings).categories == ("ai-tech", "essays")

    # 4. The unsubscribe link of the same email, and its button.
    driver.get(link(issue, "u"))
    check_page(driver, "unsubscribe")
    assert reader(url, session_settings).status == Status.ACTIVE, "opening the page changes nothing"
    press(driver, "button[type=submit]")
    assert "You are unsubscribed" in driver.page_source
    check_page(driver, "unsubscribed")
    assert reader(url, session_settings).status == Status.UNSUBSCRIBED
