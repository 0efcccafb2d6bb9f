import datetime as dt

import pytest
import sqlalchemy as sa

from newsletter.errors import SubscriberError
from newsletter.subscribers import (TRANSITIONS, Consent, ConsentMethod, Status, email_hash,
                                    normalize_email)

CLI = Consent(ConsentMethod.CLI)


@pytest.mark.parametrize("raw, normal", [
    ("Ana@Example.COM", "ana@example.com"),
    ("  ana@example.com ", "ana@example.com"),
    ("josé@exämple.org", "josé@exämple.org"),
    ("user@BÜCHER.de", "user@bücher.de"),
    ("first.o'brien+news@sub.example.co.uk", "first.o'brien+news@sub.example.co.uk"),
])
def test_normalize_email(raw, normal):
    assert normalize_email(raw) == normal


@pytest.mark.parametrize("raw", ["", "not-an-email", "a@b", "a..b@example.com", "ana@example",
                                 "ana@exa mple.com", "ana@localhost", "@example.com", "x" * 65 + "@example.com"])
def test_invalid_addresses(raw):
    with pytest.raises(SubscriberError):
        normalize_email(raw)


def test_add_and_show(subs):
    reader = subs.add("Ana@Example.COM", name="Ana", categories=["ai-tech", "essays"], consent=CLI)
    assert reader.email == "ana@example.com"
    assert reader.status == Status.ACTIVE and reader.confirmed_at is not None
    assert reader.categories == ("ai-tech", "essays")
    assert reader.consent_method == "cli" and reader.consent_at.tzinfo is not None
    assert subs.get("ANA@example.com").id == reader.id, "one reader whatever the case"
    with pytest.raises(SubscriberError, match="already a reader"):
        subs.add("ana@EXAMPLE.com", consent=CLI)
    with pytest.raises(SubscriberError, match="unknown category 'sports'"):
        subs.add("bo@example.com", categories=["sports"], consent=CLI)
    assert subs.get("bo@example.com") is None


def test_internationalized_reader(subs):
    reader = subs.add("José@Exämple.org", consent=CLI)
    assert subs.get("josé@exämple.org").id == reader.id


def test_tokens_are_long_unique_stable_and_rotatable(subs):
    a = subs.add("a@example.com", consent=CLI)
    b = subs.add("b@example.com", consent=CLI)
    assert a.token != b.token and len(a.token) >= 32  # 24 random bytes, 192 bits
    assert subs.get("a@example.com").token == a.token
    assert subs.by_token(a.token).email == "a@example.com"
    rotated = subs.rotate_token("a@example.com")
    assert rotated.token != a.token
    assert subs.by_token(a.token) is None and subs.by_token(rotated.token).id == a.id


def test_status_transitions(subs):
    subs.add("p@example.com", status=Status.PENDING, consent=Consent(ConsentMethod.FORM, ip="203.0.113.7"))
    assert subs.get("p@example.com").consent_ip == "203.0.113.7"
    assert subs.change_status("p@example.com", Status.ACTIVE).confirmed_at is not None
    unsubscribed = subs.change_status("p@example.com", Status.UNSUBSCRIBED, reason="link")
    assert unsubscribed.unsubscribed_at is not None
    subs.add("c@example.com", consent=CLI)
    subs.change_status("c@example.com", Status.COMPLAINED)
    with pytest.raises(SubscriberError, match="c@example.com is complained and cannot become active"):
        subs.change_status("c@example.com", Status.ACTIVE)
    assert subs.get("c@example.com").status == Status.COMPLAINED


def test_transition_table_is_complete():
    assert set(TRANSITIONS) == set(Status)
    for status, targets in TRANSITIONS.items():
        assert status not in targets
    assert Status.ACTIVE not in TRANSITIONS[Status.COMPLAINED]


def test_set_categories_and_counts(subs):
    subs.add("a@example.com", categories=["ai-tech"], consent=CLI)
    subs.add("b@example.com", categories=["ai-tech", "essays"], consent=CLI)
    subs.add("c@example.com", categories=["essays"], consent=CLI)
    subs.change_status("c@example.com", Status.UNSUBSCRIBED)
    assert subs.set_categories("a@example.com", ["ai-news", "ai-tech"]).categories == ("ai-news", "ai-tech")
    by_status, by_category = subs.counts()
    assert by_status == {"pending": 0, "active": 2, "unsubscribed": 1, "bounced": 0, "complained": 0}
    assert by_category == {"ai-tech": 2, "ai-research": 0, "ai-news": 1, "essays": 1}


def test_forget_keeps_only_a_hash(subs, db_url):
    subs.add("gone@example.com", name="Gone Person", categories=["essays"], consent=CLI)
    subs.forget("Gone@example.com")
    assert subs.get("gone@example.com") is None
    with subs.engine.connect() as conn:
        dump = " ".join(str(row) for table in ("readers", "reader_categories", "events", "suppressions")
                        for row in conn.execute(sa.text(f"SELECT * FROM {table}")))
    assert "gone@example.com" not in dump and "Gone Person" not in dump
    assert email_hash("gone@example.com") in dump
    with pytest.raises(SubscriberError, match="was forgotten"):
        subs.add("GONE@example.com", consent=CLI)


def test_iter_readers_filters_and_streams(subs):
    for i in range(25):
        subs.add(f"r{i}@example.com", categories=["ai-tech"] if i % 2 else ["essays"], consent=CLI)
    subs.change_status("r3@example.com", Status.BOUNCED)
    tech = list(subs.iter_readers(category="ai-tech", chunk=4))
    assert [r.email for r in tech] == [f"r{i}@example.com" for i in range(1, 25, 2)]
    assert all(r.categories == ("ai-tech",) for r in tech)
    active_tech = list(subs.iter_readers(status=Status.ACTIVE, category="ai-tech", chunk=5))
    assert len(active_tech) == 11
    assert [r.email for r in subs.iter_readers(status=Status.BOUNCED)] == ["r3@example.com"]


def test_times_are_utc(subs):
    reader = subs.add("t@example.com", consent=CLI)
    assert reader.created_at.utcoffset() == dt.timedelta(0)
    assert abs(reader.created_at - dt.datetime.now(dt.timezone.utc)) < dt.timedelta(minutes=1)
