import base64
import datetime as dt
import functools
import os
import random
import re
import stat
import time

import pytest
import sqlalchemy as sa

from newsletter.config import load_secret_key
from newsletter.errors import SubscriberError
from newsletter.store import deliveries, send_runs, suppressions, utcnow
from newsletter.subscribers import (TRANSITIONS, Consent, ConsentMethod, Status, Subscribers, email_hash,
                                    new_token, normalize_email, unkeyed_email_hash)

CLI = Consent(ConsentMethod.CLI)
KEY = "test-key-" + "k" * 32


@pytest.fixture(autouse=True)
def secret_key(monkeypatch):
    """The key for forgotten addresses from the environment: no test writes a key file here."""
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", KEY)
    return KEY.encode()


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


def test_forget_keeps_only_a_keyed_hash(subs, db_url, session_settings):
    subs.add("gone@example.com", name="Gone Person", categories=["essays"], consent=CLI)
    subs.forget("Gone@example.com")
    assert subs.get("gone@example.com") is None
    with subs.engine.connect() as conn:
        dump = " ".join(str(row) for table in ("readers", "reader_categories", "events", "suppressions")
                        for row in conn.execute(sa.text(f"SELECT * FROM {table}")))
    assert "gone@example.com" not in dump and "Gone Person" not in dump
    assert email_hash("gone@example.com", KEY.encode()) in dump
    assert unkeyed_email_hash("gone@example.com") not in dump  # a guess alone cannot be checked
    with pytest.raises(SubscriberError, match="was forgotten"):
        subs.add("GONE@example.com", consent=CLI)
    # The database alone, with any other key, cannot confirm the guess.
    other = Subscribers.open(db_url, session_settings.categories, secret_key=b"another-key-" + b"x" * 32)
    assert not other.is_forgotten("gone@example.com")
    other.close()


def test_forget_clears_the_copies_kept_on_deliveries(subs):
    reader = subs.add("gone@example.com", consent=CLI)
    kept = subs.add("kept@example.com", consent=CLI)
    now = utcnow()
    with subs.engine.begin() as conn:  # a batch in flight keeps the address and token it went out with
        run_id = conn.execute(sa.insert(send_runs).values(
            issue="2026-01-01.md", digest_path="digests/2026-01-01.md", digest_sha256="0" * 64,
            subject="Issue", provider="outbox", status="sending", created_at=now,
            updated_at=now)).inserted_primary_key[0]
        conn.execute(sa.insert(deliveries), [
            {"run_id": run_id, "reader_id": r.id, "variant": "", "state": "sending", "batch_key": "b1",
             "email": r.email, "token": r.token, "attempts": 1, "updated_at": now} for r in (reader, kept)])
    subs.forget("gone@example.com")
    with subs.engine.connect() as conn:
        rows = conn.execute(sa.select(deliveries.c.reader_id, deliveries.c.email, deliveries.c.token)
                            .order_by(deliveries.c.id)).all()
        dump = " ".join(str(row) for row in conn.execute(sa.select(deliveries)))
    assert rows == [(None, None, None), (kept.id, "kept@example.com", kept.token)]
    assert "gone@example.com" not in dump and reader.token not in dump


def test_hashes_from_before_the_key_are_still_recognised(subs):
    with subs.engine.begin() as conn:  # what `forget` kept before its hash was keyed
        conn.execute(sa.insert(suppressions).values(email_hash=unkeyed_email_hash("old@example.com"),
                                                    reason="forgotten", created_at=utcnow()))
    assert subs.is_forgotten("Old@Example.com")
    with pytest.raises(SubscriberError, match="old@example.com was forgotten"):
        subs.add("old@example.com", consent=CLI)
    subs.add("new@example.com", consent=CLI)
    subs.forget("new@example.com")  # new ones are keyed, old ones still count
    assert subs.forgotten(["old@example.com", "new@example.com", "other@example.com"]) == {
        "old@example.com", "new@example.com"}
    for i in range(3):  # more stored hashes than looked-up ones: the lookup goes by query
        subs.add(f"gone{i}@example.com", consent=CLI)
        subs.forget(f"gone{i}@example.com")
    assert [subs.is_forgotten(a) for a in ("old@example.com", "new@example.com", "other@example.com")] == [
        True, True, False]


def test_the_key_file_is_made_at_the_first_forget(subs, db_url, session_settings, tmp_path, monkeypatch):
    monkeypatch.delenv("NEWSLETTER_SECRET_KEY")
    settings = session_settings.with_overrides(secret_key_file=tmp_path / "newsletter.key",
                                               database_url=db_url)
    store = Subscribers.from_settings(settings)
    store.add("a@example.com", consent=CLI)
    store.add("b@example.com", consent=CLI)
    assert not (tmp_path / "newsletter.key").exists()  # nothing to hash yet, no key needed
    store.forget("a@example.com")
    key = (tmp_path / "newsletter.key").read_bytes()
    assert len(key) == 32 and stat.S_IMODE((tmp_path / "newsletter.key").stat().st_mode) == 0o600
    assert store.is_forgotten("a@example.com")
    store.close()
    again = Subscribers.from_settings(settings)  # another process: the same key from the file
    with pytest.raises(SubscriberError, match="was forgotten"):
        again.add("a@example.com", consent=CLI)
    again.close()


def test_a_lost_key_is_an_error_not_a_forgotten_reader_let_back(subs, db_url, session_settings, tmp_path,
                                                                monkeypatch):
    monkeypatch.delenv("NEWSLETTER_SECRET_KEY")
    key_file = tmp_path / "newsletter.key"
    store = Subscribers.open(db_url, session_settings.categories,
                             secret_key=functools.partial(load_secret_key, session_settings.with_overrides(
                                 secret_key_file=key_file)))
    store.add("a@example.com", consent=CLI)
    store.forget("a@example.com")
    store.close()
    key_file.unlink()
    store = Subscribers.open(db_url, session_settings.categories,
                             secret_key=functools.partial(load_secret_key, session_settings.with_overrides(
                                 secret_key_file=key_file)))
    with pytest.raises(SubscriberError, match=r"newsletter.key: secret key file not found .*needed to "
                                              r"recognise the forgotten addresses.*restore it from your backup"):
        store.add("a@example.com", consent=CLI)
    assert not key_file.exists()  # not silently replaced by a new key
    store.close()


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


# -- one way to become a reader -----------------------------------------------------------------

def test_names_are_stored_without_control_or_direction_characters(subs):
    reader = subs.add("a@example.com", name="  Ana\u202e\u2066 Lopez\x1b[31m\r\nBcc: x  ", consent=CLI)
    assert reader.name == "Ana Lopez[31m Bcc: x"
    assert subs.add("b@example.com", name="N" * 250, consent=CLI).name == "N" * 200  # what the column holds
    assert subs.add("c@example.com", name=" \x00\u200f ", consent=CLI).name is None
    assert subs.add("d@example.com", name="Zoë 👩\u200d💻 عربي", consent=CLI).name == "Zoë 👩\u200d💻 عربي"


def test_a_new_reader_row_follows_its_status(subs):
    consented = dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.timezone.utc)
    consent = Consent(ConsentMethod.FORM, ip=" 2001:DB8::1 ", at=consented, source="https://example.org/s")
    for status in Status:
        reader = subs.add(f"{status.value}@example.com", status=status, consent=consent)
        assert reader.consent_at == consented and reader.consent_ip == "2001:db8::1"
        assert reader.confirmed_at == (consented if status == Status.ACTIVE else None)
        assert (reader.unsubscribed_at is not None) == (status == Status.UNSUBSCRIBED)
        assert reader.created_at > consented and reader.status_changed_at == reader.created_at


# -- reader tokens --------------------------------------------------------------------------------

def _fixed_urandom(monkeypatch, byte: int) -> list[int]:
    """Make the operating system's random source return `byte` repeated; returns the sizes asked for."""
    asked: list[int] = []

    def urandom(n):
        asked.append(n)
        return bytes([byte]) * n
    monkeypatch.setattr(os, "urandom", urandom)
    monkeypatch.setattr(random, "_urandom", urandom)  # what `secrets` reaches os.urandom through
    return asked


def test_tokens_come_from_the_operating_systems_random_source(monkeypatch):
    asked = _fixed_urandom(monkeypatch, 7)
    first, second = new_token(), new_token()
    assert first == second, "a token must be made of the OS CSPRNG's bytes and nothing else"
    assert asked and asked[0] >= 24, "at least 192 bits per token"
    _fixed_urandom(monkeypatch, 8)
    assert new_token() != first, "and it must depend on them"


def test_tokens_do_not_come_from_time_or_the_random_module(monkeypatch):
    for name in ("time", "time_ns", "monotonic", "monotonic_ns", "perf_counter", "perf_counter_ns"):
        monkeypatch.setattr(time, name, lambda: 1_700_000_000)
    tokens = set()
    for _ in range(20):
        random.seed(1)
        tokens.add(new_token())
    assert len(tokens) == 20


def test_tokens_are_long_and_url_safe():
    tokens = {new_token() for _ in range(200)}
    assert len(tokens) == 200
    for token in tokens:
        assert re.fullmatch(r"[A-Za-z0-9_-]{32,64}", token)  # fits readers.token (64)
        assert len(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))) >= 24


def test_readers_get_their_token_from_the_same_source(subs, monkeypatch):
    _fixed_urandom(monkeypatch, 9)
    expected = new_token()
    assert subs.add("a@example.com", consent=CLI).token == expected
    assert subs.rotate_token("a@example.com").token == expected
