"""Signup with double opt-in, through Flask's test client: /subscribe and /confirm/SIGNED.

Confirmation links are read from the real outbox (.eml files, parsed with email.parser), as a
reader's mail client would get them.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import logging
import re
from email import policy
from email.parser import BytesParser

import pytest
import sqlalchemy as sa

from newsletter.signups import Signups, where_confirmations_go
from newsletter.store import events, rate_limits, readers, signups, utcnow
from newsletter.subscribers import Consent, ConsentMethod, Status, Subscribers
from newsletter.web import create_app

from .conftest import TEST_KEY, form_value

IPS = (f"198.51.100.{n}" for n in itertools.count(1))  # a fresh address per request: no IP limit


@pytest.fixture(autouse=True)
def secret_key(monkeypatch):
    """The readers' store hashes forgotten addresses with the app's key; never a key file here."""
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", TEST_KEY)


class Clock:
    """Now, moved by `offset`: links expire without anyone waiting."""

    def __init__(self):
        self.offset = dt.timedelta()

    def __call__(self) -> dt.datetime:
        return utcnow() + self.offset


@pytest.fixture
def clock(web):
    moved = Clock()
    web.app.extensions["signups"] = Signups(web.subs, web.settings, TEST_KEY.encode(), clock=moved)
    return moved


def sign_up(web, email, *, ip=None, client=None, headers=None, **fields):
    return (client or web.client).post("/subscribe", data={"email": email, **fields}, headers=headers or {},
                                       environ_base={"REMOTE_ADDR": ip or next(IPS)})


def outbox(web) -> list:
    """The confirmation emails written so far, oldest first, parsed as a mail client would."""
    folder = web.settings.outbox_dir
    files = sorted(folder.glob("*.eml"), key=lambda p: int(p.name.split("-")[1])) if folder.exists() else []
    return [BytesParser(policy=policy.default).parsebytes(p.read_bytes()) for p in files]


def link_in(message) -> str:
    """The path of the confirmation link in an email's plain-text part."""
    text = message.get_body(("plain",)).get_content()
    return re.search(r"https://newsletter\.example\.com(/confirm/\S+)", text).group(1)


def confirm(web, path, ip="192.0.2.44"):
    page = web.client.get(path)
    assert page.status_code == 200, page.get_data(as_text=True)
    return web.client.post(path, data={"csrf": form_value(page.get_data(as_text=True), "csrf")},
                           environ_base={"REMOTE_ADDR": ip})


def rows(subs, table, **where):
    with subs.engine.connect() as conn:
        query = sa.select(table)
        for column, value in where.items():
            query = query.where(table.c[column] == value)
        return conn.execute(query).mappings().all()


def reader_events(subs, reader_id):
    return [(r["kind"], json.loads(r["detail"] or "{}")) for r in
            sorted(rows(subs, events, reader_id=reader_id), key=lambda r: r["id"])]


def stopped_reader(web, email, status: Status, **fields):
    web.subs.add(email, consent=Consent(ConsentMethod.CLI), **fields)
    reason = "link" if status == Status.UNSUBSCRIBED else "provider"
    return web.subs.change_status(email, status, reason=reason)


# -- the form ------------------------------------------------------------------------------------

def test_the_form_labels_every_field_offers_the_categories_and_hides_a_honeypot(web):
    page = web.client.get("/subscribe")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert '<form method="post" action="/subscribe">' in html
    for field in ("email", "name", "scope-all", "scope-some"):
        assert f'<label class="field" for="{field}">' in html or f'<label for="{field}">' in html, field
    for category in web.settings.categories:
        assert f'<label for="cat-{category.slug}">{category.name}</label>' in html
    assert 'id="scope-all" name="scope" value="all" checked' in html
    trap = re.search(r'<div class="trap" aria-hidden="true">.*?</div>', html, re.S).group()
    assert 'name="website"' in trap and 'tabindex="-1"' in trap and 'autocomplete="off"' in trap
    assert "<label" in trap
    assert 'name="csrf"' not in html and "<script" not in html
    assert "form-action 'self'" in page.headers["Content-Security-Policy"]


def test_an_address_that_cannot_be_one_gets_the_form_back_with_what_was_typed(web):
    answer = sign_up(web, "not an address", name="<b>Ana</b>", scope="some", category="essays")
    html = answer.get_data(as_text=True)
    assert answer.status_code == 400 and "Enter an email address" in html
    assert 'value="not an address"' in html and 'value="&lt;b&gt;Ana&lt;/b&gt;"' in html
    assert 'value="essays" checked' in html and 'value="some" checked' in html
    none = sign_up(web, "ana@example.com", scope="some")
    assert none.status_code == 400 and "at least one topic" in none.get_data(as_text=True)
    assert rows(web.subs, readers) == [] and outbox(web) == []


# -- signing up and confirming -------------------------------------------------------------------

def test_a_signup_is_confirmed_from_the_link_in_the_email(web):
    answer = sign_up(web, "Ana@Example.com", ip="203.0.113.5", name="Ana", scope="some",
                     category=["ai-tech", "essays", "nonsense"],
                     headers={"Referer": "https://blog.example.org/about?session=secret#x"})
    assert answer.status_code == 200 and "Check your inbox" in answer.get_data(as_text=True)
    pending = web.subs.require("ana@example.com")
    assert pending.status == Status.PENDING and pending.categories == ("ai-tech", "essays")
    (signup,) = rows(web.subs, signups)
    assert (signup["ip"], signup["source"], signup["categories"]) == \
        ("203.0.113.5", "https://blog.example.org/about", "ai-tech,essays")
    assert signup["emailed_at"] is not None and signup["confirmed_at"] is None

    (message,) = outbox(web)
    assert message["To"] == "ana@example.com"
    assert message["Subject"] == "Confirm your subscription to Open Models Weekly"
    assert message["From"] == web.settings.sender and "List-Unsubscribe" not in message
    for part in ("plain", "html"):
        body = message.get_body((part,)).get_content()
        for needed in ("Open Models Weekly", "AI Tech, Essays", "48 hours", "If you did not sign up",
                       "Storgatan 12", "Hello Ana", link_in(message)):
            assert needed in body, (part, needed)

    path = link_in(message)
    page = web.client.get(path)
    assert "Confirm my subscription" in page.get_data(as_text=True)
    assert page.headers["Cache-Control"] == "no-store"
    assert web.subs.require("ana@example.com").status == Status.PENDING
    done = confirm(web, path, ip="192.0.2.44")
    html = done.get_data(as_text=True)
    assert done.status_code == 200 and "Welcome" in html and done.headers["Cache-Control"] == "no-store"

    reader = web.subs.require("ana@example.com")
    assert f'href="/p/{reader.token}"' in html
    assert web.client.get(f"/p/{reader.token}").status_code == 200
    assert reader.status == Status.ACTIVE and reader.confirmed_at is not None
    assert (reader.consent_method, reader.consent_ip, reader.consent_source) == \
        ("form", "192.0.2.44", "https://blog.example.org/about")
    assert reader.consent_at >= signup["created_at"] and reader.name == "Ana"
    assert rows(web.subs, signups)[0]["confirmed_at"] is not None
    kinds = reader_events(web.subs, reader.id)
    assert ("status", {"old": "pending", "new": "active", "reason": "confirmed signup",
                       "ip": "192.0.2.44"}) in kinds
    confirmed = dict(kinds)["signup_confirmed"]
    assert (confirmed["signup_ip"], confirmed["ip"]) == ("203.0.113.5", "192.0.2.44")


def test_our_own_form_records_its_page_as_the_source(web):
    html = web.client.get("/subscribe").get_data(as_text=True)
    source = form_value(html, "source")
    assert source == "https://newsletter.example.com/subscribe"
    sign_up(web, "ana@example.com", source=source, headers={"Origin": "null"})
    sign_up(web, "bo@example.com", headers={"Origin": "null"})
    sign_up(web, "cy@example.com", source="x" * 1000 + "\u202e\n")
    assert [r["source"] for r in rows(web.subs, signups)] == [source, None, "x" * 300]


def test_a_form_pasted_into_another_site_works_without_a_cookie_or_form_token(web):
    fields = {"email": "ana@example.com", "name": "Ana", "scope": "some", "category": ["essays", "ai-news"],
              "website": "", "source": "https://blog.example.org/about"}
    answer = web.client.post("/subscribe", data=fields, headers={"Origin": "https://blog.example.org",
                                                                 "Referer": "https://blog.example.org/"})
    assert answer.status_code == 200 and b"Check your inbox" in answer.data
    assert "Set-Cookie" not in answer.headers
    (signup,) = rows(web.subs, signups)
    assert (signup["source"], signup["categories"]) == ("https://blog.example.org/about", "essays,ai-news")
    assert len(outbox(web)) == 1


def test_a_get_of_the_confirmation_link_changes_nothing(web):
    sign_up(web, "ana@example.com")
    path = link_in(outbox(web)[0])
    before = (rows(web.subs, readers), rows(web.subs, signups), rows(web.subs, events))
    for _ in range(3):  # a mail scanner, a link preview, the reader
        assert web.client.get(path).status_code == 200
    assert (rows(web.subs, readers), rows(web.subs, signups), rows(web.subs, events)) == before


def test_the_confirm_button_needs_its_form_token(web):
    sign_up(web, "ana@example.com")
    sign_up(web, "bo@example.com")
    ana, bo = (link_in(m) for m in outbox(web))
    bo_csrf = form_value(web.client.get(bo).get_data(as_text=True), "csrf")
    assert web.client.post(ana).status_code == 400
    assert web.client.post(ana, data={"csrf": bo_csrf}).status_code == 400
    assert web.subs.require("ana@example.com").status == Status.PENDING


def test_a_used_link_does_nothing_more(web):
    sign_up(web, "ana@example.com")
    path = link_in(outbox(web)[0])
    csrf = form_value(web.client.get(path).get_data(as_text=True), "csrf")
    assert web.client.post(path, data={"csrf": csrf}).status_code == 200
    reader = web.subs.require("ana@example.com")
    web.client.post(f"/u/{reader.token}", data={"List-Unsubscribe": "One-Click"})
    again = web.client.post(path, data={"csrf": csrf})
    assert again.status_code == 410 and "already been used" in again.get_data(as_text=True)
    assert web.client.get(path).status_code == 410
    assert web.subs.require("ana@example.com").status == Status.UNSUBSCRIBED


# -- who signs up: the answer never tells ---------------------------------------------------------

def test_the_answer_is_the_same_byte_for_byte_whoever_signs_up(web, clock):
    web.subs.add("active@example.com", consent=Consent(ConsentMethod.CLI))
    web.subs.add("pending@example.com", status=Status.PENDING, consent=Consent(ConsentMethod.FORM))
    for status in (Status.UNSUBSCRIBED, Status.BOUNCED, Status.COMPLAINED):
        stopped_reader(web, f"{status.value}@example.com", status)
    web.subs.add("forgotten@example.com", consent=Consent(ConsentMethod.CLI))
    web.subs.forget("forgotten@example.com")
    for _ in range(3):  # the per-address limit is used up: a fourth request sends nothing
        sign_up(web, "limited@example.com")
    cases = {
        "new": "new@example.com", "pending": "pending@example.com", "active": "active@example.com",
        "unsubscribed": "unsubscribed@example.com", "bounced": "bounced@example.com",
        "complained": "complained@example.com", "forgotten": "forgotten@example.com",
        "limited": "limited@example.com",
        "plausible but invalid": "someone@example..com", "no domain dot": "someone@localhost",
        "bad local part": ".someone@example.com", "upper case": "NEW@EXAMPLE.COM",
    }
    answers = {case: sign_up(web, email, name="Ana", scope="some", category="essays")
               for case, email in cases.items()}
    answers["honeypot"] = sign_up(web, "bot@example.com", website="https://spam.example")
    bodies = {case: a.get_data() for case, a in answers.items()}
    assert {a.status_code for a in answers.values()} == {200}
    assert len(set(bodies.values())) == 1, {c: len(b) for c, b in bodies.items()}
    assert len({tuple(sorted((k, v) for k, v in a.headers.items())) for a in answers.values()}) == 1
    assert b"Check your inbox" in bodies["new"]
    sent_to = [m["To"] for m in outbox(web)]
    assert sorted(set(sent_to)) == ["bounced@example.com", "complained@example.com", "forgotten@example.com",
                                    "limited@example.com", "new@example.com", "pending@example.com",
                                    "unsubscribed@example.com"]
    assert sent_to.count("limited@example.com") == 3 and sent_to.count("new@example.com") == 2


def test_an_active_reader_gets_no_second_email_and_nothing_changes(web):
    web.subs.add("ana@example.com", name="Ana", categories=["ai-tech"], consent=Consent(ConsentMethod.CLI))
    before = web.subs.require("ana@example.com")
    sign_up(web, "ana@example.com", name="Someone Else", scope="some", category="essays")
    assert outbox(web) == [] and rows(web.subs, signups) == []
    assert web.subs.require("ana@example.com") == before


def test_a_pending_reader_signing_up_again_gets_a_new_email(web):
    sign_up(web, "ana@example.com", scope="some", category="essays")
    sign_up(web, "ana@example.com", scope="some", category="ai-news", name="Ana")
    first, second = (link_in(m) for m in outbox(web))
    assert first != second
    assert confirm(web, second).status_code == 200
    reader = web.subs.require("ana@example.com")
    assert (reader.status, reader.categories, reader.name) == (Status.ACTIVE, ("ai-news",), "Ana")
    superseded = web.client.get(first)  # the older request went with the confirmation
    assert superseded.status_code == 404 and "does not work" in superseded.get_data(as_text=True)


@pytest.mark.parametrize("status", [Status.UNSUBSCRIBED, Status.BOUNCED, Status.COMPLAINED])
def test_a_stopped_reader_stays_stopped_until_the_click(web, status, run, db_url, monkeypatch):
    stopped = stopped_reader(web, "ana@example.com", status, categories=["ai-tech"])
    sign_up(web, "ana@example.com", ip="203.0.113.9", name="Ana", scope="some", category="essays")
    unchanged = web.subs.require("ana@example.com")
    assert unchanged == stopped  # status, consent, categories, timestamps: all as they were
    # A prune of unconfirmed signups must not delete the record of their stopping.
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", db_url)
    assert run("subscribers", "prune-pending", "--older-than", "1h").code == 0
    web.client.get(link_in(outbox(web)[0]))
    assert web.subs.require("ana@example.com") == stopped

    assert confirm(web, link_in(outbox(web)[0]), ip="192.0.2.80").status_code == 200
    reader = web.subs.require("ana@example.com")
    assert reader.status == Status.ACTIVE and reader.categories == ("essays",)
    assert (reader.consent_method, reader.consent_ip, reader.name) == ("form", "192.0.2.80", "Ana")
    assert reader.consent_at > stopped.consent_at and reader.confirmed_at > stopped.status_changed_at
    changes = [(d["old"], d["new"]) for kind, d in reader_events(web.subs, reader.id) if kind == "status"]
    expected = [(status.value, "pending"), ("pending", "active")] if status == Status.COMPLAINED else \
        [(status.value, "active")]
    assert changes[-len(expected):] == expected


def test_a_forgotten_address_comes_back_only_by_clicking(web):
    web.subs.add("ana@example.com", consent=Consent(ConsentMethod.CLI))
    web.subs.forget("ana@example.com")
    sign_up(web, "ana@example.com")
    assert web.subs.require("ana@example.com").status == Status.PENDING
    assert web.subs.is_forgotten("ana@example.com")  # until they confirm, still not to be imported
    assert confirm(web, link_in(outbox(web)[0])).status_code == 200
    assert web.subs.require("ana@example.com").status == Status.ACTIVE
    assert not web.subs.is_forgotten("ana@example.com")


# -- links that cannot confirm -------------------------------------------------------------------

def test_an_expired_link_does_nothing_and_says_so(web, clock):
    sign_up(web, "ana@example.com")
    path = link_in(outbox(web)[0])
    clock.offset = dt.timedelta(hours=47, minutes=59)
    page = web.client.get(path)
    assert page.status_code == 200  # still in time
    csrf = form_value(page.get_data(as_text=True), "csrf")
    clock.offset = dt.timedelta(hours=48, seconds=1)
    for answer in (web.client.get(path), web.client.post(path, data={"csrf": csrf})):
        html = answer.get_data(as_text=True)
        assert answer.status_code == 410 and "This link has expired" in html and "Sign up again" in html
    assert web.subs.require("ana@example.com").status == Status.PENDING
    assert rows(web.subs, signups)[0]["confirmed_at"] is None


def changed(text: str) -> str:
    """`text` with its first character replaced by another (the last one of a base64 text may
    carry only padding bits)."""
    return ("A" if text[0] != "A" else "B") + text[1:]


def test_a_tampered_link_does_nothing(web):
    sign_up(web, "ana@example.com")
    path = link_in(outbox(web)[0])
    payload, stamp, signature = path.removeprefix("/confirm/").split(".")
    other = Signups(web.subs, web.settings, b"another-key-" + b"x" * 32)
    forged_elsewhere = other._serializer.dumps([1, 0])
    tampered = [f"/confirm/{payload}.{stamp}.{changed(signature)}",
                f"/confirm/{changed(payload)}.{stamp}.{signature}",
                f"/confirm/{payload}.{changed(stamp)}.{signature}", f"/confirm/{payload}",
                f"/confirm/{forged_elsewhere}", "/confirm/" + "A" * 300]
    for bad in tampered:
        page = web.client.get(bad)
        assert page.status_code == 404 and "This link does not work" in page.get_data(as_text=True), bad
        from newsletter.web.security import csrf_token

        with web.app.test_request_context():
            csrf = csrf_token("confirm", bad.removeprefix("/confirm/"))
        assert web.client.post(bad, data={"csrf": csrf}).status_code == 404
    assert web.subs.require("ana@example.com").status == Status.PENDING


def test_a_link_whose_signup_was_pruned_confirms_no_later_one(web, clock, run, db_url, monkeypatch):
    clock.offset = -dt.timedelta(days=8)
    sign_up(web, "ana@example.com")
    old = link_in(outbox(web)[0])
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", db_url)
    assert run("subscribers", "prune-pending").out.startswith("removed 1 ")
    clock.offset = dt.timedelta()
    sign_up(web, "bo@example.com")  # on SQLite, this signup gets the pruned one's id again
    clock.offset = -dt.timedelta(days=8)  # the old link as if still in time
    page = web.client.get(old)
    assert page.status_code == 404 and "does not work" in page.get_data(as_text=True)
    assert web.subs.require("bo@example.com").status == Status.PENDING


def test_an_old_link_after_an_unsubscribe_does_nothing(web):
    sign_up(web, "ana@example.com")
    path = link_in(outbox(web)[0])
    csrf = form_value(web.client.get(path).get_data(as_text=True), "csrf")
    reader = web.subs.require("ana@example.com")
    web.client.post(f"/u/{reader.token}", data={"List-Unsubscribe": "One-Click"})  # changed their mind
    for answer in (web.client.get(path), web.client.post(path, data={"csrf": csrf})):
        assert answer.status_code == 410 and "no longer works" in answer.get_data(as_text=True)
    assert web.subs.require("ana@example.com").status == Status.UNSUBSCRIBED


# -- abuse ---------------------------------------------------------------------------------------

def test_a_filled_honeypot_stores_and_sends_nothing(web):
    answer = sign_up(web, "ana@example.com", website="https://spam.example")
    assert answer.status_code == 200 and b"Check your inbox" in answer.data
    assert rows(web.subs, readers) == [] and rows(web.subs, signups) == []
    assert rows(web.subs, rate_limits) == [] and outbox(web) == []


def test_too_many_signups_from_one_ip_get_429_across_two_app_instances(web, db_url):
    other_store = Subscribers.open(db_url, web.settings.categories)
    try:
        other = create_app(web.settings, subscribers=other_store, key=TEST_KEY.encode()).test_client()
        clients = [web.client, other]
        for n in range(web.settings.signups_per_ip_hour):
            answer = sign_up(web, f"reader{n}@example.com", ip="203.0.113.50", client=clients[n % 2])
            assert answer.status_code == 200, n
        for client in clients:
            refused = sign_up(web, "one.more@example.com", ip="203.0.113.50", client=client)
            assert refused.status_code == 429 and "Too many requests" in refused.get_data(as_text=True)
            assert 0 < int(refused.headers["Retry-After"]) <= 3600
        assert sign_up(web, "one.more@example.com", ip="203.0.113.51", client=other).status_code == 200
    finally:
        other_store.close()
    assert web.subs.get("one.more@example.com") is not None
    assert len(outbox(web)) == web.settings.signups_per_ip_hour + 1


def test_the_per_address_limit_sends_no_fourth_email(web):
    for _ in range(4):
        assert sign_up(web, "ana@example.com").status_code == 200
    assert len(outbox(web)) == 3 and len(rows(web.subs, signups)) == 3


def test_the_counters_hold_no_address_and_old_windows_go(web, clock):
    sign_up(web, "ana@example.com", ip="203.0.113.77")
    keys = [r["key"] for r in rows(web.subs, rate_limits)]
    assert len(keys) == 2 and not any("203.0.113.77" in k or "ana" in k for k in keys)
    clock.offset = dt.timedelta(days=3)
    sign_up(web, "bo@example.com", ip="203.0.113.77")
    assert sorted(r["count"] for r in rows(web.subs, rate_limits)) == [1, 1]  # the old windows are gone


# -- what a reader typed --------------------------------------------------------------------------

def test_a_name_with_markup_or_line_breaks_is_text_everywhere(web):
    name = '<script>alert(1)</script>\r\nBcc: victim@example.com'
    sign_up(web, "ana@example.com", name=name)
    (message,) = outbox(web)
    html = message.get_body(("html",)).get_content()
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "Bcc" not in {k for k, _ in message.items()} and "victim" not in str(message["To"])
    path = link_in(message)
    for page in (web.client.get(path), confirm(web, path)):
        text = page.get_data(as_text=True)
        assert "<script>alert" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    cleaned = "<script>alert(1)</script> Bcc: victim@example.com"
    assert web.subs.require("ana@example.com").name == cleaned
    assert [r["name"] for r in rows(web.subs, signups)] == [cleaned]


def test_a_name_given_at_signup_reaches_a_nameless_reader_cleaned(web):
    stopped_reader(web, "ana@example.com", Status.UNSUBSCRIBED)
    sign_up(web, "ana@example.com", name="Ana\u202e\r\nLindqvist")
    assert "Hello Ana Lindqvist," in outbox(web)[0].get_body(("plain",)).get_content()
    confirm(web, link_in(outbox(web)[0]))
    assert web.subs.require("ana@example.com").name == "Ana Lindqvist"


# -- the provider --------------------------------------------------------------------------------

def test_a_provider_failure_keeps_the_signup_and_the_page(web, tmp_path, caplog):
    good = sign_up(web, "someone@example.com").get_data()
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the outbox should be")
    settings = web.settings.with_overrides(outbox_dir=blocked / "outbox")
    web.app.extensions["signups"] = Signups(web.subs, settings, TEST_KEY.encode())
    caplog.set_level(logging.INFO)
    answer = sign_up(web, "ana@example.com")
    assert answer.status_code == 200 and answer.get_data() == good
    reader = web.subs.require("ana@example.com")
    (signup,) = rows(web.subs, signups, reader_id=reader.id)
    assert reader.status == Status.PENDING and signup["emailed_at"] is None
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert f"reader {reader.id}: the confirmation email was not sent" in text and "ana@" not in text


def test_confirmations_go_through_resend_and_its_failure_keeps_the_signup(web, fake_resend):
    settings = web.settings.with_overrides(provider="resend")
    web.app.extensions["signups"] = Signups(web.subs, settings, TEST_KEY.encode())
    sign_up(web, "ana@example.com")
    (delivery,) = fake_resend.for_address("ana@example.com")
    assert delivery.subject == "Confirm your subscription to Open Models Weekly"
    path = re.search(r"https://newsletter\.example\.com(/confirm/\S+)", delivery.text).group(1)
    assert confirm(web, path).status_code == 200
    fake_resend.switches.fail_next = 1
    answer = sign_up(web, "bo@example.com")
    assert answer.status_code == 200 and b"Check your inbox" in answer.data
    assert web.subs.require("bo@example.com").status == Status.PENDING
    assert rows(web.subs, signups, reader_id=web.subs.require("bo@example.com").id)[0]["emailed_at"] is None
    assert where_confirmations_go(settings) is None
    assert where_confirmations_go(web.settings) == str(web.settings.outbox_dir)


def test_logs_carry_the_reader_id_never_the_address_or_link(web, caplog):
    caplog.set_level(logging.DEBUG)
    sign_up(web, "ana.reader@example.com")
    path = link_in(outbox(web)[0])
    confirm(web, path)
    reader = web.subs.require("ana.reader@example.com")
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert f"reader {reader.id}: confirmation email sent" in text
    assert f"reader {reader.id} confirmed their subscription" in text
    assert "ana.reader" not in text and reader.token not in text
    assert path.removeprefix("/confirm/") not in text


def test_every_signup_page_carries_the_security_headers(web):
    sign_up(web, "ana@example.com")
    path = link_in(outbox(web)[0])
    for answer in (web.client.get("/subscribe"), sign_up(web, "bo@example.com"), web.client.get(path),
                   web.client.get("/confirm/nonsense"), sign_up(web, "x")):
        csp = answer.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
        assert answer.headers["Referrer-Policy"] == "no-referrer"
