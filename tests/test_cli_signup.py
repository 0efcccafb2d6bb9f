"""`newsletter subscribers prune-pending` and `newsletter subscribers resubscribe`."""

from __future__ import annotations

import datetime as dt
import re
from email import policy
from email.parser import BytesParser

import pytest
import sqlalchemy as sa

from newsletter.signups import Signups
from newsletter.store import events, signups, utcnow
from newsletter.subscribers import Consent, ConsentMethod, Status
from newsletter.web import create_app

from .conftest import TEST_KEY, form_value


@pytest.fixture
def cli(run, monkeypatch, db_url, tmp_path):
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", db_url)
    monkeypatch.setenv("NEWSLETTER_OUTBOX_DIR", str(tmp_path / "outbox"))
    return run


@pytest.fixture
def store(cli, subs, monkeypatch):
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", TEST_KEY)  # as `run` sets it: one key for all
    return subs


def signed_up(subs, settings, email, days_ago: float, **fields):
    """A signup through the library, made `days_ago` days ago."""
    then = utcnow() - dt.timedelta(days=days_ago)
    result = Signups(subs, settings, TEST_KEY.encode(), clock=lambda: then).sign_up(email, **fields)
    return result


def outbox_messages(tmp_path):
    return [BytesParser(policy=policy.default).parsebytes(p.read_bytes())
            for p in sorted((tmp_path / "outbox").glob("*.eml"))]


def test_prune_pending_removes_only_readers_who_never_confirmed_an_old_signup(cli, store, settings,
                                                                            tmp_path):
    settings = settings.with_overrides(outbox_dir=tmp_path / "outbox")
    signed_up(store, settings, "old@example.com", 8)
    signed_up(store, settings, "old.twice@example.com", 9)
    signed_up(store, settings, "old.twice@example.com", 8)
    signed_up(store, settings, "recent@example.com", 3)
    signed_up(store, settings, "old.and.recent@example.com", 10)
    signed_up(store, settings, "old.and.recent@example.com", 1)
    store.add("imported@example.com", status=Status.PENDING, consent=Consent(ConsentMethod.IMPORT))
    store.add("gone@example.com", consent=Consent(ConsentMethod.CLI))
    store.change_status("gone@example.com", Status.UNSUBSCRIBED)
    signed_up(store, settings, "gone@example.com", 20)
    store.add("active@example.com", consent=Consent(ConsentMethod.CLI))
    old_ids = [store.require(e).id for e in ("old@example.com", "old.twice@example.com")]

    result = cli("subscribers", "prune-pending")
    assert result.code == 0, result.err
    assert result.out.strip() == "removed 2 pending readers who never confirmed"
    assert store.get("old@example.com") is None and store.get("old.twice@example.com") is None
    for kept in ("recent@example.com", "old.and.recent@example.com", "imported@example.com"):
        assert store.require(kept).status == Status.PENDING
    assert store.require("gone@example.com").status == Status.UNSUBSCRIBED
    assert store.require("active@example.com").status == Status.ACTIVE
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(signups)
                            .where(signups.c.reader_id.in_(old_ids))).scalar() == 0
        assert conn.execute(sa.select(sa.func.count()).select_from(events)
                            .where(events.c.reader_id.in_(old_ids))).scalar() == 0
        orphans = conn.execute(sa.select(events.c.kind).where(events.c.reader_id.is_(None))).scalars().all()
        assert orphans == ["pruned_pending"]  # their own events went with them

    assert cli("subscribers", "prune-pending", "--older-than", "48h").out.strip() == \
        "removed 1 pending reader who never confirmed"
    assert store.get("recent@example.com") is None and store.get("old.and.recent@example.com") is not None
    assert cli("subscribers", "prune-pending", "--older-than", "12h").out.strip() == \
        "removed 1 pending reader who never confirmed"
    assert cli("subscribers", "prune-pending", "--older-than", "1h").out.strip() == \
        "removed 0 pending readers who never confirmed"
    assert store.require("imported@example.com").status == Status.PENDING
    for bad in ("7", "7w", "0d", "-1d", "d"):
        refused = cli("subscribers", "prune-pending", "--older-than", bad)
        assert refused.code == 2 and "is not an age like 7d or 12h" in refused.err, bad


def test_prune_pending_keeps_a_reader_who_confirmed(cli, store, settings, tmp_path):
    settings = settings.with_overrides(outbox_dir=tmp_path / "outbox")
    signed_up(store, settings, "ana@example.com", 10)
    with store.engine.begin() as conn:  # confirmed, then the status changed back by hand
        conn.execute(sa.update(signups).values(confirmed_at=utcnow()))
    assert cli("subscribers", "prune-pending").out.strip() == "removed 0 pending readers who never confirmed"
    assert store.get("ana@example.com") is not None


@pytest.mark.parametrize("status", [Status.UNSUBSCRIBED, Status.BOUNCED, Status.COMPLAINED, Status.PENDING])
def test_resubscribe_sends_the_link_and_only_the_click_makes_them_active(cli, store, settings, tmp_path,
                                                                         db_url, status):
    store.add("ana@example.com", name="Ana", categories=["essays"], status=Status.PENDING
              if status == Status.PENDING else Status.ACTIVE, consent=Consent(ConsentMethod.IMPORT))
    if status != Status.PENDING:
        store.change_status("ana@example.com", status)
    before = store.require("ana@example.com")
    result = cli("subscribers", "resubscribe", "Ana@Example.com")
    assert result.code == 0, result.err
    assert result.out.startswith("sent a confirmation email to ana@example.com; its link works for 48 hours")
    assert "outbox" in result.out
    assert store.require("ana@example.com") == before  # nothing changes until they click

    (message,) = outbox_messages(tmp_path)
    assert message["To"] == "ana@example.com" and "Essays" in message.get_body(("plain",)).get_content()
    path = re.search(r"https://newsletter\.example\.com(/confirm/\S+)",
                     message.get_body(("plain",)).get_content()).group(1)
    app = create_app(settings.with_overrides(outbox_dir=tmp_path / "outbox"), subscribers=store,
                     key=TEST_KEY.encode())
    client = app.test_client()
    page = client.get(path)
    assert page.status_code == 200
    client.post(path, data={"csrf": form_value(page.get_data(as_text=True), "csrf")},
                environ_base={"REMOTE_ADDR": "192.0.2.5"})
    reader = store.require("ana@example.com")
    assert reader.status == Status.ACTIVE and reader.categories == ("essays",)
    assert (reader.consent_method, reader.consent_ip, reader.consent_source) == \
        ("form", "192.0.2.5", "newsletter subscribers resubscribe")


def test_resubscribe_refuses_an_active_or_unknown_reader_and_a_fourth_email(cli, store, tmp_path):
    store.add("ana@example.com", consent=Consent(ConsentMethod.CLI))
    active = cli("subscribers", "resubscribe", "ana@example.com")
    assert active.code == 1 and active.err.strip() == "error: ana@example.com is already active"
    unknown = cli("subscribers", "resubscribe", "nobody@example.com")
    assert unknown.code == 1 and unknown.err.strip() == "error: no reader with address nobody@example.com"
    store.change_status("ana@example.com", Status.UNSUBSCRIBED)
    for _ in range(3):
        assert cli("subscribers", "resubscribe", "ana@example.com").code == 0
    fourth = cli("subscribers", "resubscribe", "ana@example.com")
    assert fourth.code == 1 and "already sent 3 confirmation emails today" in fourth.err
    assert len(fourth.err.strip().splitlines()) == 1
    assert len(outbox_messages(tmp_path)) == 3
    assert store.require("ana@example.com").status == Status.UNSUBSCRIBED


def test_resubscribe_says_when_the_provider_fails(cli, store, monkeypatch, tmp_path):
    store.add("ana@example.com", consent=Consent(ConsentMethod.CLI))
    store.change_status("ana@example.com", Status.UNSUBSCRIBED)
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("NEWSLETTER_OUTBOX_DIR", str(blocked / "outbox"))
    result = cli("subscribers", "resubscribe", "ana@example.com")
    assert result.code == 1
    assert result.err.startswith("error: the confirmation email to ana@example.com was not sent: "
                                 "cannot write")
    assert store.require("ana@example.com").status == Status.UNSUBSCRIBED

