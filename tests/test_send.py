"""The send engine against the fake Resend server, through the real resend SDK, and over SMTP."""

from __future__ import annotations

import datetime as dt
import socket
import threading
import time
from collections import Counter

import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller

from newsletter.digest import load_digest
from newsletter.errors import SendError, Unavailable
from newsletter.ledger import MAX_ATTEMPTS, Ledger, Run, RunStatus
from newsletter.providers import make_provider
from newsletter.send import Composer, Sender, check_unchanged, open_run, run_variants
from newsletter.store import deliveries, send_batches, utcnow
from newsletter.subscribers import Consent, ConsentMethod, Status, Subscribers

from .conftest import EXAMPLE

CATEGORY_SETS = [(), ("ai-tech",), ("ai-research",), ("essays", "ai-news"), ("ai-tech", "ai-research")]
STORY = {"ai-research": "Lemma-7B learns when to stop trusting", "ai-tech": "RCLA promises a sixfold smaller",
         "ai-news": "Open weights, fine print", "essays": "Open weights, fine print"}


class Crash(BaseException):
    """A stand-in for the process dying: nothing in the engine catches it."""


@pytest.fixture
def send_settings(settings, db_url, tmp_path):
    return settings.with_overrides(database_url=db_url, provider="resend", send_rate=1000.0,
                                   outbox_dir=tmp_path / "outbox", request_timeout=1.0)


@pytest.fixture
def readers(subs):
    """Readers with every kind of category set, and some who must get nothing."""
    emails = {}
    for i in range(230):
        cats = CATEGORY_SETS[i % len(CATEGORY_SETS)]
        email = f"reader{i:03d}@example.com"
        subs.add(email, name=f"Reader {i}", categories=cats, consent=Consent(ConsentMethod.FORM))
        emails[email] = cats
    for i, status in enumerate([Status.UNSUBSCRIBED, Status.BOUNCED, Status.COMPLAINED]):
        subs.add(f"gone{i}@example.com", consent=Consent(ConsentMethod.FORM))
        subs.change_status(f"gone{i}@example.com", status)
    subs.add("pending@example.com", status=Status.PENDING, consent=Consent(ConsentMethod.FORM))
    return emails


def make_sender(settings, subs, provider=None, ledger=None, **options):
    digest = load_digest(EXAMPLE, settings)
    ledger = ledger or Ledger(subs.engine)
    provider = provider or make_provider(settings)
    return digest, ledger, provider, options


def start(settings, subs, *, again=False):
    digest = load_digest(EXAMPLE, settings)
    ledger = Ledger(subs.engine)
    run, due, _ = open_run(ledger, digest, subs, settings.provider, settings, again=again)
    return digest, ledger, run


def sender_for(settings, digest, ledger, run, provider=None, **options):
    variants = run_variants(ledger, run.id)  # as the run keeps them
    options = {"rate": settings.send_rate, "batch_size": 50, "max_failures": 6, "base_delay": 0.01,
               "max_delay": 0.05} | options
    return Sender(ledger, provider or make_provider(settings), Composer(settings, digest.slug, variants), **options)


def send_all(settings, subs, **options):
    digest, ledger, run = start(settings, subs)
    return sender_for(settings, digest, ledger, run, **options).send(run), ledger


def assert_exactly_once(fake, readers):
    assert fake.addresses() == Counter({email: 1 for email in readers})


def test_every_reader_gets_one_copy_of_their_variant(fake_resend, send_settings, subs, readers):
    run, ledger = send_all(send_settings, subs)
    assert run.status == RunStatus.FINISHED
    assert ledger.counts(run.id) == {"queued": 0, "sending": 0, "sent": 230, "failed": 0, "skipped": 0}
    assert_exactly_once(fake_resend, readers)
    for email, cats in readers.items():
        [delivery] = fake_resend.for_address(email)
        reader = subs.get(email)
        expected = set(STORY.values()) if not cats else {STORY[c] for c in cats}
        for title in set(STORY.values()):
            assert (title in delivery.html) == (title in expected), (email, title)
        assert f"https://newsletter.example.com/u/{reader.token}" in delivery.html
        assert f"https://newsletter.example.com/u/{reader.token}" in delivery.text
        assert f"https://newsletter.example.com/p/{reader.token}" in delivery.html
        assert "%%" not in delivery.html and "%%" not in delivery.text
        assert delivery.headers["List-Unsubscribe"] == f"<https://newsletter.example.com/u/{reader.token}>"
        assert delivery.headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert delivery.headers["List-Id"] == "Open Models Weekly <open-models-weekly.newsletter.example.com>"
        assert {t["name"]: t["value"] for t in delivery.tags}["issue"] == "2026-04-22-open-models-weekly"
        assert delivery.subject.startswith("Lemma-7B checks its own proofs")
    others = [a for a in fake_resend.addresses() if not a.startswith("reader")]
    assert others == [], "unsubscribed, bounced, complained and pending readers get nothing"


def test_the_same_issue_is_not_sent_twice_by_accident(fake_resend, send_settings, subs, readers):
    send_all(send_settings, subs)
    with pytest.raises(SendError, match="was already sent .*--again"):
        start(send_settings, subs)
    digest, ledger, run = start(send_settings, subs, again=True)
    sender_for(send_settings, digest, ledger, run).send(run)
    assert set(fake_resend.addresses().values()) == {2}


class CrashingLedger(Ledger):
    def __init__(self, engine, where, on_batch=2):
        super().__init__(engine)
        self.where, self.on_batch, self.claims = where, on_batch, 0

    def claim(self, run_id, size, lease=300.0):
        batch = super().claim(run_id, size, lease)
        self.claims += 1
        if self.where == "after claim" and self.claims == self.on_batch:
            raise Crash
        return batch

    def record(self, batch, outcomes):
        if self.where == "before record" and self.claims == self.on_batch:
            raise Crash  # the provider answered; the database never heard of it
        result = super().record(batch, outcomes)
        if self.where == "after record" and self.claims == self.on_batch:
            raise Crash
        return result


class CrashingProvider:
    def __init__(self, inner, where, on_batch=2):
        self.inner, self.where, self.on_batch, self.calls = inner, where, on_batch, 0
        self.name, self.idempotent = inner.name, inner.idempotent

    def send(self, messages, key):
        self.calls += 1
        if self.where == "before request" and self.calls == self.on_batch:
            raise Crash
        result = self.inner.send(messages, key)
        if self.where == "after answer" and self.calls == self.on_batch:
            raise Crash
        return result

    def close(self):
        pass


@pytest.mark.parametrize("where", ["after claim", "before request", "after answer", "before record",
                                   "after record"])
def test_a_crash_at_any_step_then_resume_delivers_exactly_once(fake_resend, send_settings, subs, readers,
                                                                where):
    digest, _, run = start(send_settings, subs)
    ledger = CrashingLedger(subs.engine, where)
    provider = CrashingProvider(make_provider(send_settings), where)
    with pytest.raises(Crash):
        sender_for(send_settings, digest, ledger, run, provider).send(run)
    assert 0 < sum(fake_resend.addresses().values()) < len(readers)

    fresh = Ledger(subs.engine)  # a new process: new objects, the same database
    run = fresh.run(run.id)
    check_unchanged(run, digest, send_settings)
    run = sender_for(send_settings, digest, fresh, run).send(run)
    assert run.status == RunStatus.FINISHED
    assert_exactly_once(fake_resend, readers)
    assert fresh.counts(run.id)["sent"] == len(readers)


def test_connection_dropped_after_the_server_did_the_work(fake_resend, send_settings, subs, readers):
    fake_resend.switches.crash_after_processing = 3  # delivered, then the answers are lost, 3 times
    run, ledger = send_all(send_settings, subs, max_failures=100, base_delay=0.05, max_delay=0.1)
    assert fake_resend.state.dropped == 3
    assert run.status == RunStatus.FINISHED
    assert_exactly_once(fake_resend, readers)


def test_server_errors_and_a_429_storm_still_deliver_everyone_once(fake_resend, send_settings, subs, readers):
    fake_resend.switches.fail_ratio = 0.2
    fake_resend.switches.fail_after_ratio = 0.1  # did the work, answered 500: the retry must not resend
    fake_resend.switches.storm_next, fake_resend.switches.storm_retry_after = 12, 0.2
    run, ledger = send_all(send_settings, subs, batch_size=10, max_failures=50)
    assert run.status == RunStatus.FINISHED
    assert_exactly_once(fake_resend, readers)
    assert fake_resend.state.requests[500] > 0 and fake_resend.state.requests[429] >= 12


def test_ratelimit_headers_are_honoured(fake_resend, send_settings, subs, readers):
    fake_resend.state.rate = 5
    started = time.monotonic()
    run, ledger = send_all(send_settings, subs, rate=50.0, batch_size=20)  # set faster than allowed
    assert run.status == RunStatus.FINISHED
    assert_exactly_once(fake_resend, readers)
    assert fake_resend.state.requests[429] == 0, "ratelimit-remaining: 0 makes us wait for the reset"
    assert time.monotonic() - started >= 1.0  # 12 requests at 5 per second take more than a second


class ReopensAfter(CrashingProvider):
    """The provider while the fake server's port is closed: it opens again after `refusals`."""

    def __init__(self, inner, fake, refusals):
        super().__init__(inner, None)
        self.fake, self.refusals, self.refused = fake, refusals, 0

    def send(self, messages, key):
        try:
            return self.inner.send(messages, key)
        except Unavailable:
            self.refused += 1
            if self.refused == self.refusals:
                self.fake.accept()
            raise


def test_timeouts_and_refused_connections_are_retried(fake_resend, send_settings, subs, readers):
    fake_resend.switches.delay, fake_resend.switches.delay_next = 1.5, 2  # the client gives up after 1 s
    run, ledger = send_all(send_settings, subs, max_failures=100, base_delay=0.2, max_delay=0.5)
    assert_exactly_once(fake_resend, readers)

    more = {f"late{i}@example.com": () for i in range(60)}
    for email in more:
        subs.add(email, consent=Consent(ConsentMethod.FORM))
    fake_resend.refuse()
    provider = ReopensAfter(make_provider(send_settings), fake_resend, refusals=3)
    digest, ledger, run = start(send_settings, subs, again=True)
    run = sender_for(send_settings, digest, ledger, run, provider, max_failures=100, base_delay=0.1,
                     max_delay=0.2).send(run)
    assert run.status == RunStatus.FINISHED and provider.refused == 3
    counts = fake_resend.addresses()
    assert all(counts[email] == 2 for email in readers) and all(counts[email] == 1 for email in more)


def test_an_invalid_address_fails_alone(fake_resend, send_settings, subs, readers):
    fake_resend.switches.reject = {"reader007@example.com"}
    run, ledger = send_all(send_settings, subs)
    assert run.status == RunStatus.FINISHED
    assert ledger.counts(run.id)["failed"] == 1 and ledger.counts(run.id)["sent"] == len(readers) - 1
    [(email, state, reason)] = ledger.problems(run.id)
    assert email == "reader007@example.com" and state == "failed" and "email@example.com" in reason
    assert fake_resend.addresses()["reader006@example.com"] == 1


def test_a_reader_unsubscribed_mid_run_gets_nothing_after(fake_resend, send_settings, subs, readers):
    late = "reader200@example.com"

    class UnsubscribeMidway(CrashingProvider):
        def send(self, messages, key):
            result = self.inner.send(messages, key)
            if self.calls == 0:
                subs.change_status(late, Status.UNSUBSCRIBED, reason="link")
            self.calls += 1
            return result

    digest, ledger, run = start(send_settings, subs)
    provider = UnsubscribeMidway(make_provider(send_settings), None)
    run = sender_for(send_settings, digest, ledger, run, provider).send(run)
    assert run.status == RunStatus.FINISHED
    assert fake_resend.addresses()[late] == 0
    assert ("reader200@example.com", "skipped", "the reader is unsubscribed") in ledger.problems(run.id)


def test_quota_exceeded_pauses_and_resume_finishes(fake_resend, send_settings, subs, readers):
    fake_resend.switches.quota = "daily"
    run, ledger = send_all(send_settings, subs)
    assert run.status == RunStatus.PAUSED and "quota" in run.reason
    assert sum(fake_resend.addresses().values()) == 0
    fake_resend.switches.quota = None
    digest = load_digest(EXAMPLE, send_settings)
    run = sender_for(send_settings, digest, ledger, run).send(run)
    assert run.status == RunStatus.FINISHED
    assert_exactly_once(fake_resend, readers)


def test_too_many_failures_pause_instead_of_burning_the_list(fake_resend, send_settings, subs, readers):
    fake_resend.switches.fail_ratio = 1.0
    run, ledger = send_all(send_settings, subs, max_failures=4)
    assert run.status == RunStatus.PAUSED
    assert run.reason.startswith("4 failed requests in a row, last: Resend:")
    assert fake_resend.state.requests[500] == 4
    fake_resend.switches.fail_ratio = 0.0
    digest = load_digest(EXAMPLE, send_settings)
    assert sender_for(send_settings, digest, ledger, run).send(run).status == RunStatus.FINISHED
    assert_exactly_once(fake_resend, readers)


def test_stop_pauses_after_the_batch_in_flight(fake_resend, send_settings, subs, readers):
    digest, ledger, run = start(send_settings, subs)
    sender = sender_for(send_settings, digest, ledger, run)
    run = sender.send(run, on_progress=lambda p: sender.stop())
    assert run.status == RunStatus.PAUSED and run.reason == "paused by the user"
    assert sum(fake_resend.addresses().values()) == 50  # one batch
    run = sender_for(send_settings, digest, ledger, run).send(run)
    assert run.status == RunStatus.FINISHED
    assert_exactly_once(fake_resend, readers)


def test_a_changed_digest_cannot_resume(fake_resend, send_settings, subs, readers, tmp_path):
    copy = tmp_path / EXAMPLE.name
    copy.write_text(EXAMPLE.read_text())
    digest = load_digest(copy, send_settings)
    ledger = Ledger(subs.engine)
    run, _, _ = open_run(ledger, digest, subs, "resend", send_settings)
    copy.write_text(EXAMPLE.read_text().replace("Corrections are always welcome.", "Corrections welcome."))
    with pytest.raises(SendError, match="changed since run .* started"):
        check_unchanged(run, load_digest(copy, send_settings), send_settings)
    copy.write_text(EXAMPLE.read_text())
    with pytest.raises(SendError, match="sender, reply_to or base_url changed"):
        check_unchanged(run, digest, send_settings.with_overrides(reply_to="other@example.com"))


def test_only_one_process_sends_a_run(fake_resend, send_settings, subs, readers):
    if subs.engine.dialect.name != "sqlite":
        pytest.skip("one sender per run is SQLite's rule; on PostgreSQL senders share a run, batch by batch (test_workers.py)")
    digest, ledger, run = start(send_settings, subs)
    other = Ledger(subs.engine)
    other.owner = "elsewhere:1"
    other.acquire(run.id, 60)
    with pytest.raises(SendError, match="is being sent by elsewhere:1"):
        sender_for(send_settings, digest, ledger, run).send(run)
    assert sum(fake_resend.addresses().values()) == 0


def test_a_refused_batch_goes_back_to_the_queue(fake_resend, send_settings, subs, readers):
    fake_resend.switches.quota = "monthly"
    run, ledger = send_all(send_settings, subs)
    assert run.status == RunStatus.PAUSED
    counts = ledger.counts(run.id)
    assert counts["queued"] == len(readers) and counts["sending"] == 0, "nothing is left in doubt"


def test_resume_sends_the_same_request_even_if_a_token_changed(fake_resend, send_settings, subs, readers):
    digest, _, run = start(send_settings, subs)
    ledger = CrashingLedger(subs.engine, "before record")
    with pytest.raises(Crash):
        sender_for(send_settings, digest, ledger, run).send(run)
    in_flight = [d for d in fake_resend.state.deliveries]
    subs.rotate_token(in_flight[-1].to)  # between the crash and the resume
    fresh = Ledger(subs.engine)
    run = sender_for(send_settings, digest, fresh, fresh.run(run.id)).send(fresh.run(run.id))
    assert run.status == RunStatus.FINISHED, run.reason
    assert_exactly_once(fake_resend, readers)


def test_two_runs_of_one_issue_cannot_start_together(fake_resend, send_settings, subs, readers):
    digest, ledger, run = start(send_settings, subs)
    with pytest.raises(SendError, match="another run of 2026-04-22-open-models-weekly was started"):
        ledger.create_run(issue=digest.slug, digest_path="x", digest_sha256="x", settings_sha256="x",
                          subject="s", provider="resend", recipients=[(1, "all")])


def test_two_sends_of_one_issue_at_the_same_moment_start_one_run(fake_resend, send_settings, subs, readers,
                                                                  db_url):
    digest = load_digest(EXAMPLE, send_settings)
    go, both_checked = threading.Barrier(2, timeout=30), threading.Barrier(2, timeout=30)

    class AtTheSameMoment(Ledger):
        def create_run(self, **fields):
            both_checked.wait()  # neither run exists yet: only the database can refuse one now
            return super().create_run(**fields)

    results = []

    def send_command():  # what `newsletter send` does, in a process of its own (its own connections)
        store = Subscribers.open(db_url, send_settings.categories)
        try:
            go.wait()
            results.append(open_run(AtTheSameMoment(store.engine), digest, store, "resend", send_settings)[0])
        except Exception as e:  # noqa: BLE001 - the test looks at what each one got
            results.append(e)
        finally:
            store.close()

    threads = [threading.Thread(target=send_command) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    runs = [r for r in results if isinstance(r, Run)]
    assert len(runs) == 1, f"{len(runs)} runs of one issue started at the same moment: {results}"
    [run], [refused] = runs, [e for e in results if not isinstance(e, Run)]
    assert isinstance(refused, SendError), repr(refused)
    assert str(refused).startswith(f"another run of {digest.slug} was started at the same moment")
    ledger = Ledger(subs.engine)
    assert [r.id for r in ledger.runs(digest.slug)] == [run.id]
    assert sum(ledger.counts(run.id).values()) == len(readers)
    assert sender_for(send_settings, digest, ledger, run).send(run).status == RunStatus.FINISHED
    assert_exactly_once(fake_resend, readers)


# -- retries have limits ------------------------------------------------------------------------

class FailsOn(CrashingProvider):
    """A provider having trouble: the requests numbered in `failing` (from 1) fail, the rest go out."""

    def __init__(self, inner, failing):
        super().__init__(inner, None)
        self.failing = failing

    def send(self, messages, key):
        self.calls += 1
        if self.calls in self.failing:
            raise Unavailable(f"request {self.calls} failed")
        return self.inner.send(messages, key)


def test_only_failures_in_a_row_pause_the_run_with_the_last_error(fake_resend, send_settings, subs, readers):
    digest, ledger, run = start(send_settings, subs)
    provider = FailsOn(make_provider(send_settings), {1, 2, 3, 5, 6, 7, 9, 10, 11})  # never 4 in a row
    run = sender_for(send_settings, digest, ledger, run, provider, max_failures=4).send(run)
    assert run.status == RunStatus.FINISHED and provider.calls == 14  # 5 batches, 9 failures
    assert_exactly_once(fake_resend, readers)

    digest, ledger, run = start(send_settings, subs, again=True)
    provider = FailsOn(make_provider(send_settings), set(range(2, 100)))
    run = sender_for(send_settings, digest, ledger, run, provider, max_failures=4).send(run)
    assert run.status == RunStatus.PAUSED and provider.calls == 5
    assert run.reason == "4 failed requests in a row, last: request 5 failed"


def test_a_rate_limit_that_never_clears_pauses_the_run(fake_resend, send_settings, subs, readers):
    fake_resend.switches.storm_next, fake_resend.switches.storm_retry_after = 200, 0.01
    run, ledger = send_all(send_settings, subs, max_failures=2)
    assert run.status == RunStatus.PAUSED
    assert run.reason.startswith("the provider kept refusing for rate limits: Resend: Too many requests.")
    assert fake_resend.state.requests[429] == 21  # max_failures * 10 retries, then it stops asking
    assert ledger.counts(run.id)["queued"] == len(readers) and sum(fake_resend.addresses().values()) == 0
    fake_resend.switches.storm_next = 0
    digest = load_digest(EXAMPLE, send_settings)
    assert sender_for(send_settings, digest, ledger, run).send(run).status == RunStatus.FINISHED
    assert_exactly_once(fake_resend, readers)


class Recording(CrashingProvider):
    """Notes the idempotency key of every request."""

    def __init__(self, inner):
        super().__init__(inner, None)
        self.keys = []

    def send(self, messages, key):
        self.keys.append(key)
        return self.inner.send(messages, key)


@pytest.mark.parametrize("hours", [22, 24])
def test_a_batch_in_flight_longer_than_a_key_lives_is_never_sent_again(fake_resend, send_settings, subs,
                                                                        readers, hours):
    digest, _, run = start(send_settings, subs)
    with pytest.raises(Crash):  # the second batch was delivered; the database never heard
        sender_for(send_settings, digest, CrashingLedger(subs.engine, "before record"), run).send(run)
    with subs.engine.begin() as conn:
        [key] = conn.execute(sa.select(deliveries.c.batch_key).where(
            deliveries.c.run_id == run.id, deliveries.c.state == "sending").distinct()).scalars().all()
        conn.execute(sa.update(send_batches).where(send_batches.c.key == key).values(
            claimed_at=utcnow() - dt.timedelta(hours=hours)))  # claimed `hours` ago, then the process stopped

    fresh = Ledger(subs.engine)
    provider = Recording(make_provider(send_settings))
    run = sender_for(send_settings, digest, fresh, fresh.run(run.id), provider).send(fresh.run(run.id))
    assert run.status == RunStatus.FINISHED
    assert_exactly_once(fake_resend, readers)
    if hours < 23:  # Resend still knows the key: the same request again is delivered once
        assert provider.keys[0] == key and fresh.counts(run.id)["sent"] == len(readers)
        return
    assert key not in provider.keys, "sent again after its key expired: it could be delivered twice"
    assert fresh.counts(run.id) == {"queued": 0, "sending": 0, "sent": len(readers) - 50, "failed": 50,
                                    "skipped": 0}
    assert {reason for _, _, reason in fresh.problems(run.id)} == {
        "in flight when the run stopped over 23 hours ago: it may or may not have been delivered; "
        "check the provider's log"}


def test_a_long_batch_with_retries_keeps_the_lease(send_settings, subs, readers, monkeypatch):
    """Retries of one batch can outlast the lease: renewed between attempts, it is never free
    for another process to take over meanwhile (the batch, and on SQLite the run)."""
    wall, ticks = [utcnow()], [0.0]  # the clocks the ledgers and the sender see
    monkeypatch.setattr("newsletter.ledger.utcnow", lambda: wall[0])
    settings = send_settings.with_overrides(provider="outbox")
    digest, ledger, run = start(settings, subs)
    other = Ledger(subs.engine)
    other.owner = "elsewhere:1"
    taken = []

    class Slow(FailsOn):
        def send(self, messages, key):
            wall[0] += dt.timedelta(minutes=2)  # every attempt takes two minutes
            ticks[0] += 120.0
            with subs.engine.connect() as conn:
                lapsed = conn.execute(sa.select(sa.func.count()).select_from(send_batches).where(
                    send_batches.c.lease_until < wall[0])).scalar()
            if lapsed:
                taken.append(("batch", self.calls + 1))
            if subs.engine.dialect.name == "sqlite":
                try:
                    other.acquire(run.id, 60)
                    taken.append(("run", self.calls + 1))
                except SendError:
                    pass
            return super().send(messages, key)

    provider = Slow(make_provider(settings), {1, 2, 3, 4, 5, 6})  # the first batch: 14 minutes
    run = sender_for(settings, digest, ledger, run, provider, clock=lambda: ticks[0], max_failures=10).send(run)
    assert taken == [], f"another process could take over: {taken[:1]}"
    assert run.status == RunStatus.FINISHED and provider.calls == 11


# -- the send rate -----------------------------------------------------------------------------

def test_requests_reach_the_provider_no_faster_than_send_rate(fake_resend, send_settings, subs, readers):
    rate = 2.0  # requests 0.5 s apart; without spacing they go about 0.1 s apart
    run, _ = send_all(send_settings, subs, rate=rate)  # 5 batches of 50
    assert run.status == RunStatus.FINISHED
    arrivals = fake_resend.state.arrivals
    assert len(arrivals) == 5
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    assert min(gaps) > 0.6 / rate, gaps  # 1/rate apart when sent; arrival times jitter a little


# -- SMTP through the engine -------------------------------------------------------------------

class Mailbox:
    """An SMTP server's handler that refuses some recipients: for good, or for a while."""

    def __init__(self):
        self.refuse: dict[str, str] = {}  # address -> the reply, every time
        self.busy: dict[str, int] = {}  # address -> how many more times it answers 451
        self.asked, self.delivered = Counter(), Counter()

    async def handle_RCPT(self, server, session, envelope, address, options):  # noqa: N802
        self.asked[address] += 1
        if address in self.refuse:
            return self.refuse[address]
        if self.busy.get(address, 0) > 0:
            self.busy[address] -= 1
            return "451 4.2.1 mailbox busy, try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        self.delivered.update(envelope.rcpt_tos)
        return "250 Message accepted"


@pytest.fixture
def smtp(send_settings):
    """An SMTP server on 127.0.0.1, and settings that send through it."""
    mailbox = Mailbox()
    with socket.socket() as probe:  # aiosmtpd checks its own port once started: it needs a real one
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield mailbox, send_settings.with_overrides(provider="smtp", smtp_host="127.0.0.1", smtp_port=port,
                                                smtp_security="none")
    controller.stop()


def smtp_readers(subs, *extra: str) -> list[str]:
    emails = [f"s{i:02d}@example.com" for i in range(12)] + list(extra)
    for email in emails:
        subs.add(email, consent=Consent(ConsentMethod.FORM))
    return emails


def test_over_smtp_a_refused_address_fails_with_the_servers_reason(smtp, subs):
    mailbox, settings = smtp
    emails = smtp_readers(subs, "nobody@example.com")
    mailbox.refuse["nobody@example.com"] = "550 5.1.1 no such user here"
    run, ledger = send_all(settings, subs, batch_size=5)
    assert run.status == RunStatus.FINISHED
    assert ledger.problems(run.id) == [("nobody@example.com", "failed", "550 5.1.1 no such user here")]
    assert mailbox.asked["nobody@example.com"] == 1, "a permanent refusal is not tried again"
    assert mailbox.delivered == Counter({email: 1 for email in emails if email != "nobody@example.com"})


def test_over_smtp_a_busy_mailbox_is_tried_again_up_to_max_attempts(smtp, subs):
    mailbox, settings = smtp
    emails = smtp_readers(subs, "busy@example.com", "full@example.com")
    mailbox.busy = {"busy@example.com": 2, "full@example.com": 1000}  # accepts on the third try; never
    run, ledger = send_all(settings, subs, batch_size=5)
    assert run.status == RunStatus.FINISHED
    assert mailbox.asked["busy@example.com"] == 3 and mailbox.asked["full@example.com"] == MAX_ATTEMPTS == 3
    assert ledger.problems(run.id) == [("full@example.com", "failed", "451 4.2.1 mailbox busy, try again later")]
    assert mailbox.delivered == Counter({email: 1 for email in emails if email != "full@example.com"})
