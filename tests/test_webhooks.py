"""Resend's webhooks: signed the way Svix signs, checked before anything is read, stored once,
acting on readers (newsletter/web/webhooks.py, newsletter/reports.py)."""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import time
import uuid

import pytest
import sqlalchemy as sa

from newsletter.reports import Report, Reports
from newsletter.store import deliveries, events, readers, reports, send_runs
from newsletter.subscribers import Consent, ConsentMethod, Status

from .fake_resend import svix_headers

SECRET = "whsec_" + base64.b64encode(b"a test secret of 32 bytes, exact").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"another secret, not the endpoint").decode()
PATH = "/webhooks/resend"


@pytest.fixture
def hooks(web, monkeypatch):
    monkeypatch.setenv("RESEND_WEBHOOK_SECRET", SECRET)
    return web


def post(web, payload, *, secret: str = SECRET, svix_id: str | None = None, timestamp: int | None = None,
         sent_body: str | None = None):
    """POST `payload` signed with `secret`; `sent_body` replaces the body after signing (tampering)."""
    body = json.dumps(payload)
    headers = svix_headers(secret, svix_id or f"msg_{uuid.uuid4().hex}", body, timestamp)
    return web.client.post(PATH, data=(sent_body if sent_body is not None else body).encode(),
                           headers=headers, content_type="application/json")


def event(kind: str, email_id: str, **data) -> dict:
    return {"type": kind, "created_at": "2026-11-25T08:00:05.000Z",
            "data": {"email_id": email_id, "created_at": "2026-11-25T08:00:00.000Z", "from": "a@example.com",
                     "to": ["reader@example.com"], "subject": "Issue", **data}}


def bounce(email_id: str, kind: str = "Permanent") -> dict:
    return event("email.bounced", email_id, bounce={"type": kind, "subType": "General",
                                                    "message": "550 5.1.1 no such user"})


def stored(web) -> list:
    with web.subs.engine.connect() as conn:
        return conn.execute(sa.select(reports).order_by(reports.c.id)).all()


def delivery(web, email: str, issue: str = "2026-11-25-issue.md", message_id: str | None = None) -> str:
    """A reader, a finished run of `issue` and their delivery with a provider message id."""
    subs = web.subs
    reader = subs.get(email) or subs.add(email, consent=Consent(ConsentMethod.CLI))
    now = dt.datetime.now(dt.timezone.utc)
    message_id = message_id or f"re_{uuid.uuid4().hex}"
    with subs.engine.begin() as conn:
        run_id = conn.execute(sa.insert(send_runs).values(
            issue=issue, digest_path=issue, digest_sha256="0" * 64, subject="Issue", provider="resend",
            status="finished", created_at=now, updated_at=now, finished_at=now)).inserted_primary_key[0]
        conn.execute(sa.insert(deliveries).values(run_id=run_id, reader_id=reader.id, variant="", state="sent",
                                                  message_id=message_id, attempts=1, updated_at=now))
    return message_id


# -- the signature --------------------------------------------------------------------------------

def test_a_correctly_signed_event_is_accepted_and_stored(hooks):
    answer = post(hooks, event("email.delivered", "re_unknown"))
    assert answer.status_code == 200
    [row] = stored(hooks)
    assert (row.source, row.kind, row.message_id, row.delivery_id) == ("resend", "delivered", "re_unknown", None)
    assert row.occurred_at == dt.datetime(2026, 11, 25, 8, 0, 5, tzinfo=dt.timezone.utc)


@pytest.mark.parametrize("how", ["wrong secret", "tampered body", "stale timestamp", "future timestamp",
                                 "no signature", "not a signature"])
def test_a_wrong_missing_or_stale_signature_is_refused_and_stores_nothing(hooks, how, caplog):
    message_id = delivery(hooks, "reader@example.com")
    payload = bounce(message_id)
    caplog.set_level(logging.INFO, logger="newsletter")
    if how == "wrong secret":
        answer = post(hooks, payload, secret=OTHER_SECRET)
    elif how == "tampered body":
        answer = post(hooks, payload, sent_body=json.dumps(payload).replace("Permanent", "Transient"))
    elif how in ("stale timestamp", "future timestamp"):
        answer = post(hooks, payload, timestamp=int(time.time()) + (-301 if how.startswith("stale") else 301))
    else:
        body = json.dumps(payload)
        headers = svix_headers(SECRET, "msg_1", body)
        if how == "no signature":
            del headers["svix-signature"]
        else:
            headers["svix-signature"] = "v1,bm90IGEgc2lnbmF0dXJl"
        answer = hooks.client.post(PATH, data=body, headers=headers, content_type="application/json")
    assert answer.status_code in (400, 401)
    assert stored(hooks) == []
    assert hooks.subs.require("reader@example.com").status == Status.ACTIVE
    refused = [r.getMessage() for r in caplog.records if "webhook refused" in r.getMessage()]
    assert refused, "a refused webhook is logged"
    assert not any("no such user" in line or "Permanent" in line for line in refused), "never the body"


def test_a_timestamp_within_five_minutes_is_accepted(hooks):
    assert post(hooks, event("email.sent", "re_x"), timestamp=int(time.time()) - 280).status_code == 200


def test_without_a_secret_on_the_server_every_event_is_refused(web, monkeypatch):
    monkeypatch.delenv("RESEND_WEBHOOK_SECRET", raising=False)
    answer = post(web, event("email.delivered", "re_x"))
    assert answer.status_code == 503
    assert stored(web) == []


def test_a_body_that_is_not_json_or_not_an_object_is_refused(hooks):
    body = "[1, 2]"
    answer = hooks.client.post(PATH, data=body, headers=svix_headers(SECRET, "msg_list", body))
    assert answer.status_code == 400
    body = "not json"
    answer = hooks.client.post(PATH, data=body, headers=svix_headers(SECRET, "msg_text", body))
    assert answer.status_code == 400
    assert stored(hooks) == []


def test_the_same_event_delivered_again_changes_nothing(hooks):
    message_id = delivery(hooks, "reader@example.com")
    first = post(hooks, event("email.bounced", message_id, bounce={"type": "Transient", "message": "full"}),
                 svix_id="msg_replayed")
    again = post(hooks, event("email.bounced", message_id, bounce={"type": "Transient", "message": "full"}),
                 svix_id="msg_replayed")
    assert (first.status_code, again.status_code) == (200, 200)
    assert len(stored(hooks)) == 1
    with hooks.subs.engine.connect() as conn:
        assert conn.execute(sa.select(readers.c.soft_bounces)).scalar() == 1


# -- what events do to readers ------------------------------------------------------------------------

def status_events(web, email: str) -> list[dict]:
    reader_id = web.subs.require(email).id
    with web.subs.engine.connect() as conn:
        rows = conn.execute(sa.select(events.c.detail).where(events.c.reader_id == reader_id,
                                                             events.c.kind == "status")).scalars()
        return [json.loads(d) for d in rows]


def test_a_permanent_bounce_makes_the_reader_bounced_with_an_event_naming_the_issue(hooks):
    message_id = delivery(hooks, "gone@example.com", issue="2026-11-25-weekly.md")
    assert post(hooks, bounce(message_id)).status_code == 200
    assert hooks.subs.require("gone@example.com").status == Status.BOUNCED
    change = status_events(hooks, "gone@example.com")[-1]
    assert change["new"] == "bounced" and change["issue"] == "2026-11-25-weekly.md"
    assert "550 5.1.1 no such user" in change["reason"] and change["source"] == "resend"
    [row] = stored(hooks)
    assert (row.kind, row.bounce_type, row.reader_id) == ("bounced", "permanent", hooks.subs.require("gone@example.com").id)


def test_a_complaint_makes_the_reader_complained(hooks):
    message_id = delivery(hooks, "angry@example.com")
    assert post(hooks, event("email.complained", message_id)).status_code == 200
    assert hooks.subs.require("angry@example.com").status == Status.COMPLAINED
    assert status_events(hooks, "angry@example.com")[-1]["new"] == "complained"


def test_transient_bounces_count_once_per_issue_and_three_in_a_row_bounce_the_reader(hooks):
    soft = lambda m: event("email.bounced", m, bounce={"type": "Transient", "message": "mailbox full"})  # noqa: E731
    first = delivery(hooks, "full@example.com", issue="one.md")
    assert post(hooks, soft(first)).status_code == 200
    assert post(hooks, event("email.delivery_delayed", first)).status_code == 200
    assert post(hooks, soft(first)).status_code == 200  # the same issue again: counted once
    second = delivery(hooks, "full@example.com", issue="two.md")
    post(hooks, soft(second))
    assert hooks.subs.require("full@example.com").status == Status.ACTIVE
    third = delivery(hooks, "full@example.com", issue="three.md")
    post(hooks, soft(third))
    assert hooks.subs.require("full@example.com").status == Status.BOUNCED
    change = status_events(hooks, "full@example.com")[-1]
    assert change["issue"] == "three.md" and "3 issues in a row" in change["reason"]


def test_a_delivery_resets_the_transient_bounce_count(hooks):
    soft = lambda m: event("email.bounced", m, bounce={"type": "Transient", "message": "mailbox full"})  # noqa: E731
    for issue in ("one.md", "two.md"):
        post(hooks, soft(delivery(hooks, "full@example.com", issue=issue)))
    post(hooks, event("email.delivered", delivery(hooks, "full@example.com", issue="three.md")))
    for issue in ("four.md", "five.md"):
        post(hooks, soft(delivery(hooks, "full@example.com", issue=issue)))
    assert hooks.subs.require("full@example.com").status == Status.ACTIVE


def test_the_transient_bounce_limit_is_a_setting(web, subs):
    reports_ = Reports(subs.engine, soft_bounce_limit=1)
    message_id = delivery(web, "full@example.com")
    done = reports_.record(Report("resend", "msg_1", "bounced", message_id, bounce_type="transient",
                                  detail="mailbox full"))
    assert done.new_status == Status.BOUNCED


def test_a_reader_who_left_keeps_their_status(hooks):
    message_id = delivery(hooks, "left@example.com")
    hooks.subs.unsubscribe("left@example.com", reason="test")
    post(hooks, bounce(message_id))
    post(hooks, event("email.complained", message_id))
    assert hooks.subs.require("left@example.com").status == Status.UNSUBSCRIBED
    assert len(stored(hooks)) == 2


def test_every_kind_of_event_is_stored_with_what_it_carries(hooks):
    message_id = delivery(hooks, "reader@example.com")
    for payload in (event("email.sent", message_id), event("email.delivered", message_id),
                    event("email.opened", message_id),
                    event("email.clicked", message_id, click={"link": "https://example.com/source?a=1"}),
                    event("email.failed", message_id, failed={"reason": "reached daily quota"}),
                    event("contact.created", "")):
        assert post(hooks, payload).status_code == 200
    rows = stored(hooks)
    assert [r.kind for r in rows] == ["sent", "delivered", "opened", "clicked", "failed", "contact.created"]
    assert rows[3].link == "https://example.com/source?a=1"
    assert rows[4].detail == "reached daily quota"
    assert all(r.delivery_id is not None for r in rows[:5]) and rows[5].delivery_id is None
    assert hooks.subs.require("reader@example.com").status == Status.ACTIVE


def test_a_signed_event_of_any_shape_is_kept_without_an_error(hooks):
    for payload in ({"type": "email.bounced", "data": "not an object"}, {"type": 5}, {},
                    {"type": "email.bounced", "data": {"email_id": ["x"], "bounce": {"type": None}}}):
        assert post(hooks, payload).status_code == 200
    assert len(stored(hooks)) == 4


def test_a_report_recorded_twice_is_stored_and_acted_on_once(web, subs):
    message_id = delivery(web, "reader@example.com")
    reports_ = Reports(subs.engine)
    report = Report("resend", "msg_twice", "bounced", message_id, bounce_type="permanent", detail="gone")
    first, again = reports_.record(report), reports_.record(report)
    assert (first.stored, first.new_status) == (True, Status.BOUNCED)
    assert (again.stored, again.new_status) == (False, None)
    assert len(stored(web)) == 1 and len(status_events(web, "reader@example.com")) == 1


# -- newsletter webhooks test -----------------------------------------------------------------------

def test_webhooks_test_sends_a_signed_event_a_real_server_accepts(db_url, session_settings, tmp_path):
    import subprocess
    import sys

    from .conftest import ROOT, TEST_KEY, Server

    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("NEWSLETTER_", "RESEND_"))}
    env |= {"NEWSLETTER_CONFIG": str(ROOT / "newsletter.toml"), "NEWSLETTER_DATABASE_URL": db_url,
            "NEWSLETTER_SECRET_KEY": TEST_KEY}
    from newsletter.subscribers import Subscribers

    Subscribers.open(db_url, session_settings.categories).close()  # a current schema
    server = Server(dict(env, RESEND_WEBHOOK_SECRET=SECRET))
    try:
        assert server.said("Resend's webhooks: POST")
        command = [sys.executable, "-m", "newsletter", "webhooks", "test", "--url", f"{server.url}{PATH}"]
        good = subprocess.run(command, env=dict(env, RESEND_WEBHOOK_SECRET=SECRET), capture_output=True,
                              text=True, timeout=60)
        wrong = subprocess.run(command, env=dict(env, RESEND_WEBHOOK_SECRET=OTHER_SECRET), capture_output=True,
                               text=True, timeout=60)
        unset = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    finally:
        server.stop()
    assert good.returncode == 0 and "accepted a signed test event" in good.stdout, good.stderr
    assert wrong.returncode == 1 and "refused the signature" in wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1
    assert unset.returncode == 1 and "RESEND_WEBHOOK_SECRET is not set" in unset.stderr
    subs = Subscribers.open(db_url, session_settings.categories)
    with subs.engine.connect() as conn:
        kinds = conn.execute(sa.select(reports.c.kind, reports.c.delivery_id)).all()
    subs.close()
    assert kinds == [("delivered", None)]


def test_webhooks_test_says_when_no_server_answers(run, monkeypatch):
    from .conftest import free_port

    monkeypatch.setenv("RESEND_WEBHOOK_SECRET", SECRET)
    result = run("webhooks", "test", "--url", f"http://127.0.0.1:{free_port()}{PATH}")
    assert result.code == 1
    assert "could not reach" in result.err and len(result.err.strip().splitlines()) == 1
    monkeypatch.setenv("RESEND_WEBHOOK_SECRET", "whsec_not base64!")
    result = run("webhooks", "test", "--url", f"http://127.0.0.1:{free_port()}{PATH}")
    assert result.code == 1 and "not a signing secret" in result.err
