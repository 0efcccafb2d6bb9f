"""The /stats pages through Flask's test client: the login (off, 401, 429, 200 with a hash or a
password), the headers, and the figures of an issue sent through the outbox with its reports."""

from __future__ import annotations

import base64
import re

import pytest
import requests
from werkzeug.security import generate_password_hash

from newsletter.errors import ConfigError
from newsletter.subscribers import Consent, ConsentMethod
from newsletter.web import create_app
from newsletter.web.stats import FAILED_LOGINS, turn_on_hint

from .conftest import EXAMPLE, TEST_KEY, Server
from .test_stats import ARTICLE, SOURCE, message_ids, report
from .test_web_archive import send
from .test_web_e2e import add_readers, environment

KEY = TEST_KEY.encode()
ISSUE = EXAMPLE.stem
PASSWORD = "correct horse battery staple"
ADMIN_VARS = ("NEWSLETTER_ADMIN_USER", "NEWSLETTER_ADMIN_PASSWORD", "NEWSLETTER_ADMIN_PASSWORD_HASH")
SECURITY = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY",
            "Cache-Control": "no-store"}


@pytest.fixture
def stats_app(web, monkeypatch):
    """A reader app made after the environment sets (or not) the admin login."""
    def make(**env: str):
        for var in ADMIN_VARS:
            monkeypatch.delenv(var, raising=False)
        for var, value in env.items():
            monkeypatch.setenv(var, value)
        return create_app(web.settings, subscribers=web.subs, key=KEY).test_client()
    return make


def login(user: str = "admin", password: str = PASSWORD) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def hashed(password: str = PASSWORD) -> dict:
    return {"NEWSLETTER_ADMIN_PASSWORD_HASH": generate_password_hash(password)}


def assert_safe_headers(answer) -> None:
    for name, value in SECURITY.items():
        assert answer.headers[name] == value, name
    assert "default-src 'none'" in answer.headers["Content-Security-Policy"]


# -- the login ------------------------------------------------------------------------------------

def test_without_a_login_configured_the_pages_are_not_there(stats_app):
    client = stats_app()
    for path in ("/stats", f"/stats/{ISSUE}"):
        answer = client.get(path, headers=login())
        assert answer.status_code == 404 and "WWW-Authenticate" not in answer.headers
        assert answer.get_data(as_text=True) == client.get("/no-such-page").get_data(as_text=True)
    assert "NEWSLETTER_ADMIN_PASSWORD_HASH" in turn_on_hint({})
    assert turn_on_hint({"NEWSLETTER_ADMIN_PASSWORD": "x" * 12}) is None


@pytest.mark.parametrize("env", [hashed(), {"NEWSLETTER_ADMIN_PASSWORD": PASSWORD}], ids=["hash", "password"])
def test_the_right_login_opens_the_pages_and_a_wrong_one_does_not(stats_app, env):
    client = stats_app(**env)
    for headers in ({}, login(password="wrong"), login(user="root"), login(password=PASSWORD + " ")):
        answer = client.get("/stats", headers=headers)
        assert answer.status_code == 401
        assert answer.headers["WWW-Authenticate"] == 'Basic realm="newsletter stats"'
        assert_safe_headers(answer)
        assert "No issue" not in answer.get_data(as_text=True)
    answer = client.get("/stats", headers=login())
    assert answer.status_code == 200 and "No issue has been sent yet." in answer.get_data(as_text=True)
    assert_safe_headers(answer)
    assert client.get("/stats/no-such-issue", headers=login()).status_code == 404


def test_the_hash_wins_over_a_password_and_the_user_name_can_change(stats_app):
    client = stats_app(NEWSLETTER_ADMIN_PASSWORD="the plain one", NEWSLETTER_ADMIN_USER="mara", **hashed())
    assert client.get("/stats", headers=login("mara", "the plain one")).status_code == 401
    assert client.get("/stats", headers=login("admin")).status_code == 401
    assert client.get("/stats", headers=login("mara")).status_code == 200


def test_a_hash_that_is_not_one_stops_the_app(stats_app):
    with pytest.raises(ConfigError, match="NEWSLETTER_ADMIN_PASSWORD_HASH is not a password hash"):
        stats_app(NEWSLETTER_ADMIN_PASSWORD_HASH=PASSWORD)


def test_failed_logins_from_one_address_are_limited(stats_app):
    client = stats_app(**hashed())
    for _ in range(FAILED_LOGINS):
        assert client.get("/stats", headers=login(password="guess")).status_code == 401
    for headers in (login(password="guess"), login()):  # now even the right one waits
        answer = client.get("/stats", headers=headers)
        assert answer.status_code == 429 and 0 < int(answer.headers["Retry-After"]) <= 3600
    other = {"REMOTE_ADDR": "192.0.2.7"}
    assert client.get("/stats", headers=login(), environ_base=other).status_code == 200
    for _ in range(3):  # a browser's first request carries no login: never counted
        assert client.get("/stats", environ_base=other).status_code == 401
    assert client.get("/stats", headers=login(), environ_base=other).status_code == 200


def test_serve_says_how_to_turn_the_pages_on(db_url, session_settings, tmp_path):
    add_readers(db_url, session_settings, ["s0@example.com"])
    for env, said in (({}, True), (hashed(), False)):
        server = Server(environment(db_url, tmp_path, **env))
        try:
            assert requests.get(server.url + "/healthz", timeout=10).text == "ok\n"  # serving, signals handled
        finally:
            assert server.stop() == 0
        lines = [line for line in server.lines if "/stats" in line]
        assert lines == (["the /stats pages are off: set NEWSLETTER_ADMIN_PASSWORD_HASH (`newsletter "
                          "admin-password` makes one) to turn them on\n"] if said else [])


# -- the figures ----------------------------------------------------------------------------------

@pytest.fixture
def reported(web):
    """The example issue sent through the outbox to five readers, and what the provider says."""
    for i in range(5):
        web.subs.add(f"r{i}@example.com", consent=Consent(ConsentMethod.CLI))
    send(web, EXAMPLE)
    ids = message_ids(web.subs.engine)
    for name in ("r0", "r1", "r2", "r3"):
        report(web.subs.engine, "delivered", ids[name])
    report(web.subs.engine, "opened", ids["r0"])
    report(web.subs.engine, "clicked", ids["r0"], link=ARTICLE)
    report(web.subs.engine, "clicked", ids["r0"], link=SOURCE)
    report(web.subs.engine, "clicked", ids["r1"], link=ARTICLE)
    report(web.subs.engine, "bounced", ids["r4"], bounce_type="permanent")
    return web


def cell(html: str, label: str) -> str:
    """The text of the first table cell labelled `label` (its data-label), tags removed."""
    found = re.search(rf'data-label="{re.escape(label)}">(.*?)</t[dh]>', html, re.S)
    assert found, label
    return " ".join(re.sub(r"<[^>]+>", " ", found.group(1)).split())


def test_the_numbers_on_the_page(stats_app, reported):
    client = stats_app(**hashed())
    html = client.get("/stats", headers=login()).get_data(as_text=True)
    assert cell(html, "Sent") == "5"
    assert cell(html, "Delivered") == "4 80.0%"
    assert cell(html, "Clicks") == "2 50.0%"
    assert cell(html, "Opens (approximate)") == "1 25.0%"
    assert cell(html, "Bounces") == "1 20.0%" and cell(html, "Complaints") == "0 0.0%"
    assert f'href="/stats/{ISSUE}"' in html
    assert html.count('class="bar-fill"') == 4  # delivered, opened, clicked, bounced of one issue
    assert "<title>2026-04-22-open-models-weekly, clicks: 2 of 4 delivered (50.0%)</title>" in html
    assert re.search(r'<figcaption id="bars-caption">.+</figcaption>\s*<svg [^>]*aria-labelledby="bars-caption"', html)
    assert re.search(r'<figcaption id="lines-caption">.+</figcaption>\s*<svg [^>]*aria-labelledby="lines-caption"', html)
    assert html.count('class="line series-') == 2 * 5  # four topics and "every story", line and legend
    assert " style=" not in html and "<script" not in html  # the CSP would refuse both

    page = client.get(f"/stats/{ISSUE}", headers=login()).get_data(as_text=True)
    links = re.findall(r'<td class="link">(.*?)</td><td class="num">(\d+)</td>', page)
    assert links == [(ARTICLE, "2"), (SOURCE, "1")]
    assert re.search(r"<th scope=\"row\">Hard bounces</th>\s*<td class=\"num\">1</td>", page)
    assert page.count('class="bar-fill"') == 4


def test_what_is_not_tracked_says_so_on_the_page(stats_app, reported, monkeypatch):
    settings = reported.settings.with_overrides(track_opens=False)
    monkeypatch.setenv("NEWSLETTER_ADMIN_PASSWORD", PASSWORD)
    client = create_app(settings, subscribers=reported.subs, key=KEY).test_client()
    html = client.get("/stats", headers=login()).get_data(as_text=True)
    assert cell(html, "Opens (approximate)") == "not tracked"
    assert html.count('class="bar-fill"') == 3
    assert "Opens are not tracked" in html
