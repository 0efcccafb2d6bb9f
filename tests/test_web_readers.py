"""The links in every email, through Flask's test client: /u/TOKEN and /p/TOKEN."""

from __future__ import annotations

import json
import logging

import pytest
import sqlalchemy as sa

from newsletter.store import events
from newsletter.subscribers import Consent, ConsentMethod, Status

from .conftest import form_value


@pytest.fixture
def ana(web):
    return web.subs.add("ana.reader@example.com", name="Ana", categories=["ai-tech"],
                        consent=Consent(ConsentMethod.CLI))


def status_events(subs, reader_id):
    with subs.engine.connect() as conn:
        rows = conn.execute(sa.select(events.c.kind, events.c.detail).where(events.c.reader_id == reader_id)
                            .order_by(events.c.id)).all()
    return [json.loads(d) for k, d in rows if k in ("status", "categories")]


def test_one_click_post_unsubscribes_at_once_without_a_form_token(web, ana):
    answer = web.client.post(f"/u/{ana.token}", data={"List-Unsubscribe": "One-Click"},
                             environ_base={"REMOTE_ADDR": "203.0.113.7"})
    assert answer.status_code == 200
    assert web.subs.require(ana.email).status == Status.UNSUBSCRIBED
    last = status_events(web.subs, ana.id)[-1]
    assert last == {"old": "active", "new": "unsubscribed", "reason": "one-click unsubscribe",
                    "ip": "203.0.113.7"}
    # Gmail may send it again: still 200, nothing more written.
    assert web.client.post(f"/u/{ana.token}", data={"List-Unsubscribe": "One-Click"}).status_code == 200
    assert len(status_events(web.subs, ana.id)) == 1


def test_one_click_post_as_multipart_also_works(web, ana):
    answer = web.client.post(f"/u/{ana.token}", data={"List-Unsubscribe": "One-Click"},
                             content_type="multipart/form-data")
    assert answer.status_code == 200
    assert web.subs.require(ana.email).status == Status.UNSUBSCRIBED


def test_get_changes_nothing_and_shows_only_a_masked_address(web, ana):
    for _ in range(3):  # a mail scanner, a link preview, the reader
        page = web.client.get(f"/u/{ana.token}")
        assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert web.subs.require(ana.email).status == Status.ACTIVE
    assert ana.email not in html and "a••" in html and "@example.com" in html
    assert f'action="/u/{ana.token}"' in html and 'name="csrf"' in html


def test_unknown_forged_and_rotated_tokens_get_the_same_404(web, ana):
    old = ana.token
    unknown = web.client.get("/u/" + "A" * 32)
    forged = web.client.get("/u/" + old[:-1] + ("B" if old[-1] != "B" else "C"))
    web.subs.rotate_token(ana.email)
    rotated = web.client.get(f"/u/{old}")
    posted = web.client.post(f"/u/{old}", data={"List-Unsubscribe": "One-Click"})
    prefs = web.client.get(f"/p/{old}")
    odd = web.client.get("/u/%C3%A9%00x")
    bodies = {r.get_data() for r in (unknown, forged, rotated, posted, prefs, odd)}
    assert {r.status_code for r in (unknown, forged, rotated, posted, prefs, odd)} == {404}
    assert len(bodies) == 1
    assert web.subs.require(ana.email).status == Status.ACTIVE


def test_the_unsubscribe_button_needs_its_form_token(web, ana, db_url):
    assert web.client.post(f"/u/{ana.token}").status_code == 400
    assert web.client.post(f"/u/{ana.token}", data={"csrf": "forged"}).status_code == 400
    other = web.subs.add("bo@example.com", consent=Consent(ConsentMethod.CLI))
    other_token = form_value(web.client.get(f"/u/{other.token}").get_data(as_text=True), "csrf")
    assert web.client.post(f"/u/{ana.token}", data={"csrf": other_token}).status_code == 400
    assert web.subs.require(ana.email).status == Status.ACTIVE

    csrf = form_value(web.client.get(f"/u/{ana.token}").get_data(as_text=True), "csrf")
    done = web.client.post(f"/u/{ana.token}", data={"csrf": csrf})
    assert done.status_code == 200
    assert web.subs.require(ana.email).status == Status.UNSUBSCRIBED
    assert "I changed my mind" in done.get_data(as_text=True)


def test_i_changed_my_mind_resubscribes_only_through_its_signed_form(web, ana):
    csrf = form_value(web.client.get(f"/u/{ana.token}").get_data(as_text=True), "csrf")
    page = web.client.post(f"/u/{ana.token}", data={"csrf": csrf}).get_data(as_text=True)
    undo_csrf, undo = form_value(page.split("/undo")[1], "csrf"), form_value(page, "undo")

    assert web.client.post(f"/u/{ana.token}/undo", data={"csrf": undo_csrf}).status_code == 303
    assert web.client.post(f"/u/{ana.token}/undo", data={"undo": undo}).status_code == 400
    assert web.subs.require(ana.email).status == Status.UNSUBSCRIBED

    back = web.client.post(f"/u/{ana.token}/undo", data={"csrf": undo_csrf, "undo": undo},
                           environ_base={"REMOTE_ADDR": "198.51.100.4"})
    assert back.status_code == 303 and back.headers["Location"].startswith(f"/p/{ana.token}")
    reader = web.subs.require(ana.email)
    assert reader.status == Status.ACTIVE
    assert (reader.consent_method, reader.consent_ip) == ("form", "198.51.100.4")
    # The same form again, after another unsubscribe, does nothing: it was for that one.
    web.client.post(f"/u/{ana.token}", data={"List-Unsubscribe": "One-Click"})
    web.client.post(f"/u/{ana.token}/undo", data={"csrf": undo_csrf, "undo": undo})
    assert web.subs.require(ana.email).status == Status.UNSUBSCRIBED


def test_preferences_change_categories_and_every_change_is_recorded(web, ana):
    page = web.client.get(f"/p/{ana.token}").get_data(as_text=True)
    for category in web.settings.categories:
        assert f'value="{category.slug}"' in page and category.name in page
    assert 'id="cat-ai-tech" name="category" value="ai-tech" checked' in page
    csrf = form_value(page, "csrf")

    saved = web.client.post(f"/p/{ana.token}", data={"csrf": csrf, "action": "save", "scope": "some",
                                                      "category": ["essays", "ai-research", "nonsense"]},
                            environ_base={"REMOTE_ADDR": "192.0.2.9"})
    assert saved.status_code == 303
    assert web.subs.require(ana.email).categories == ("ai-research", "essays")
    assert status_events(web.subs, ana.id)[-1] == {"old": ["ai-tech"], "new": ["essays", "ai-research"],
                                                   "reason": "preferences page", "ip": "192.0.2.9"}
    assert "Your preferences are saved" in web.client.get(saved.headers["Location"]).get_data(as_text=True)

    web.client.post(f"/p/{ana.token}", data={"csrf": csrf, "action": "save", "scope": "all",
                                             "category": ["essays"]})
    assert web.subs.require(ana.email).categories == ()  # every story
    none = web.client.post(f"/p/{ana.token}", data={"csrf": csrf, "action": "save", "scope": "some"})
    assert none.status_code == 400 and "at least one topic" in none.get_data(as_text=True)


def test_preferences_refuse_a_form_without_its_token(web, ana):
    answer = web.client.post(f"/p/{ana.token}", data={"action": "save", "scope": "some", "category": "essays"})
    assert answer.status_code == 400
    unsub_csrf = form_value(web.client.get(f"/u/{ana.token}").get_data(as_text=True), "csrf")
    answer = web.client.post(f"/p/{ana.token}", data={"csrf": unsub_csrf, "action": "unsubscribe"})
    assert answer.status_code == 400  # a token for another form does not do
    assert web.subs.require(ana.email).categories == ("ai-tech",)
    assert web.subs.require(ana.email).status == Status.ACTIVE


def test_preferences_unsubscribe_and_come_back(web, ana):
    csrf = form_value(web.client.get(f"/p/{ana.token}").get_data(as_text=True), "csrf")
    web.client.post(f"/p/{ana.token}", data={"csrf": csrf, "action": "unsubscribe"})
    assert web.subs.require(ana.email).status == Status.UNSUBSCRIBED
    page = web.client.get(f"/p/{ana.token}").get_data(as_text=True)
    assert 'value="resubscribe"' in page
    web.client.post(f"/p/{ana.token}", data={"csrf": csrf, "action": "resubscribe"})
    assert web.subs.require(ana.email).status == Status.ACTIVE


@pytest.mark.parametrize("how", ["writer", "bounced", "complained"])
def test_readers_stopped_otherwise_cannot_resubscribe_from_their_links(web, ana, how):
    if how == "writer":
        web.subs.change_status(ana.email, Status.UNSUBSCRIBED, reason="removed with the CLI")
    else:
        web.subs.change_status(ana.email, Status(how), reason="provider")
    page = web.client.get(f"/p/{ana.token}").get_data(as_text=True)
    assert 'value="resubscribe"' not in page and "sign up again" in page
    from newsletter.web.security import csrf_token

    with web.app.test_request_context():
        csrf = csrf_token("preferences", ana.token)
    web.client.post(f"/p/{ana.token}", data={"csrf": csrf, "action": "resubscribe"})
    web.client.post(f"/u/{ana.token}", data={"List-Unsubscribe": "One-Click"})
    expected = Status.UNSUBSCRIBED if how == "writer" else Status(how)
    assert web.subs.require(ana.email).status == expected


def test_every_page_carries_the_security_headers(web, ana):
    for method, path in [("get", f"/u/{ana.token}"), ("get", f"/p/{ana.token}"), ("get", "/"),
                         ("get", "/nowhere"), ("get", "/healthz"), ("post", f"/u/{ana.token}"),
                         ("get", "/static/web.css")]:
        answer = getattr(web.client, method)(path)
        csp = answer.headers.get("Content-Security-Policy", "")
        assert "frame-ancestors 'none'" in csp and "script-src" not in csp and "default-src 'none'" in csp, path
        assert answer.headers["X-Content-Type-Options"] == "nosniff", path
        assert answer.headers["Referrer-Policy"] == "no-referrer", path
    assert web.client.get(f"/u/{ana.token}").headers["Cache-Control"] == "no-store"


def test_healthz_answers_when_the_database_does(web, ana):
    assert web.client.get("/healthz").status_code == 200
    web.subs.engine.dispose()
    from newsletter.store import create_engine

    web.subs.engine = create_engine("sqlite:////nonexistent-folder/x.db")
    answer = web.client.get("/healthz")
    assert answer.status_code == 503 and b"database" in answer.data


def test_logs_carry_the_reader_id_never_the_token_or_address(web, ana, caplog):
    caplog.set_level(logging.DEBUG)
    web.client.get(f"/u/{ana.token}")
    web.client.post(f"/u/{ana.token}", data={"List-Unsubscribe": "One-Click"})
    csrf = form_value(web.client.get(f"/p/{ana.token}").get_data(as_text=True), "csrf")
    web.client.post(f"/p/{ana.token}", data={"csrf": csrf, "action": "resubscribe"})
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert f"reader {ana.id} unsubscribed" in text and f"reader {ana.id} resubscribed" in text
    assert ana.token not in text and "ana.reader" not in text


@pytest.mark.parametrize("hops", [0, 1])
def test_forwarded_headers_count_only_behind_a_configured_proxy(web, ana, hops):
    from newsletter.web import create_app

    from .conftest import TEST_KEY

    app = create_app(web.settings.with_overrides(proxy_hops=hops), subscribers=web.subs, key=TEST_KEY.encode())
    app.test_client().post(f"/u/{ana.token}", data={"List-Unsubscribe": "One-Click"},
                           headers={"X-Forwarded-For": "198.51.100.77"},
                           environ_base={"REMOTE_ADDR": "127.0.0.1"})
    assert status_events(web.subs, ana.id)[-1]["ip"] == ("198.51.100.77" if hops else "127.0.0.1")
