"""What the scheduler does after a send: runs paused for a reason time fixes are tried again with
backoff, and the writer is told by email how each scheduled send ended. Time is driven by giving
`retry_paused` its `now`, never by waiting."""

from __future__ import annotations

import datetime as dt
import re
import threading
from collections import Counter
from email import message_from_bytes, policy

import pytest

from newsletter import send
from newsletter.digest import load_digest
from newsletter.ledger import Ledger, RunStatus
from newsletter.schedule import BACKOFF, next_retry, retry_paused, send_due
from newsletter.subscribers import Consent, ConsentMethod

from .conftest import EXAMPLE
from .test_schedule import SchedulerProcess, ready_copy, resend_env, scheduler_env

WRITER = "writer@example.com"
READERS = [f"q{i:02d}@example.com" for i in range(12)]


@pytest.fixture
def resend_settings(settings, tmp_path, monkeypatch, db_url, fake_resend):
    """Resend (the fake one on 127.0.0.1), batches of 4, no waiting, two failures make a pause."""
    monkeypatch.delenv("NEWSLETTER_SECRET_KEY", raising=False)
    return settings.with_overrides(provider="resend", batch_size=4, send_rate=1000.0, max_failures=2,
                                   database_url=db_url, secret_key_file=tmp_path / "newsletter.key",
                                   notify=WRITER)


@pytest.fixture
def readers(subs):
    for i, email in enumerate(READERS):
        subs.add(email, categories=("ai-tech",) if i % 2 else (), consent=Consent(ConsentMethod.CLI))
    return READERS


def start(settings, subs):
    digest = load_digest(EXAMPLE, settings)
    ledger = Ledger(subs.engine)
    run, variants, _due = send.start_run(settings, digest, subs, ledger)
    return ledger, run, digest, variants


def to_readers(fake) -> Counter:
    return Counter({a: n for a, n in fake.addresses().items() if a != WRITER})


def notes(fake) -> list:
    """The notifications the writer got, as (subject, text)."""
    return [(d.subject, d.text) for d in fake.state.deliveries if d.to == WRITER]


def test_a_quota_pause_is_retried_after_15_minutes_then_1_hour_and_finishes(resend_settings, subs, readers,
                                                                           fake_resend):
    fake_resend.switches.quota = "daily"
    ledger, run, digest, variants = start(resend_settings, subs)
    run = send.deliver(resend_settings, ledger, run, variants)
    assert run.status == RunStatus.PAUSED and run.transient and "quota" in run.reason
    assert next_retry(run) == run.updated_at + dt.timedelta(minutes=15)

    assert retry_paused(resend_settings, subs.engine, now=run.updated_at + dt.timedelta(minutes=14)) == []
    assert ledger.run(run.id).auto_retries == 0, "not before its time"

    (again,) = retry_paused(resend_settings, subs.engine, now=run.updated_at + dt.timedelta(minutes=15))
    assert again.status == RunStatus.PAUSED and again.auto_retries == 1, "still over quota"
    assert next_retry(again) == again.updated_at + dt.timedelta(hours=1)
    assert retry_paused(resend_settings, subs.engine, now=again.updated_at + dt.timedelta(minutes=59)) == []

    fake_resend.switches.quota = None  # the next day
    (done,) = retry_paused(resend_settings, subs.engine, now=again.updated_at + dt.timedelta(hours=1))
    assert done.status == RunStatus.FINISHED and done.auto_retries == 2
    assert to_readers(fake_resend) == Counter({email: 1 for email in readers})
    assert next_retry(done) is None


def test_after_the_last_retry_the_run_stays_paused_until_someone_resumes_it(resend_settings, subs, readers,
                                                                           fake_resend, run, monkeypatch,
                                                                           tmp_path, db_url):
    run_cli = run
    monkeypatch.delenv("NEWSLETTER_SECRET_KEY")
    for var, value in {"DATABASE_URL": db_url, "SECRET_KEY_FILE": str(tmp_path / "newsletter.key"),
                       "PROVIDER": "resend", "BATCH_SIZE": "4", "SEND_RATE": "1000", "MAX_FAILURES": "2",
                       "NOTIFY": WRITER, "OUTPUT_DIR": str(tmp_path / "out")}.items():
        monkeypatch.setenv(f"NEWSLETTER_{var}", value)
    fake_resend.switches.quota = "monthly"
    ledger, run, digest, variants = start(resend_settings, subs)
    run = send.deliver(resend_settings, ledger, run, variants)
    for wait in BACKOFF:
        assert next_retry(run) == run.updated_at + wait
        (run,) = retry_paused(resend_settings, subs.engine, now=run.updated_at + wait)
        assert run.status == RunStatus.PAUSED
    assert run.auto_retries == len(BACKOFF) and next_retry(run) is None
    asked = sum(fake_resend.state.requests.values())
    assert retry_paused(resend_settings, subs.engine, now=run.updated_at + dt.timedelta(days=400)) == []
    assert sum(fake_resend.state.requests.values()) == asked, "left alone: not one more request"

    shown = run_cli("runs", str(run.id))
    assert shown.code == 0 and f"paused until someone resumes it: `newsletter resume {run.id}`" in shown.out

    monkeypatch.delenv("RESEND_API_KEY")
    refused = run_cli("resume", str(run.id))  # no --yes: the question would come first
    assert refused.code == 1 and refused.err.startswith("error: ") and "RESEND_API_KEY" in refused.err
    assert len(refused.err.splitlines()) == 1 and "Resume run" not in refused.out
    monkeypatch.setenv("RESEND_API_KEY", fake_resend.state.api_key)

    resumed = run_cli("resume", str(run.id), "--yes")  # the quota is still there: it pauses again
    assert resumed.code != 0 and "quota" in resumed.err, resumed.err
    again = ledger.run(run.id)
    assert again.auto_retries == 0 and next_retry(again) == again.updated_at + BACKOFF[0], \
        "a resume by hand gives the next pause its retries afresh"
    shown = run_cli("runs", str(run.id))
    assert f"tries it again at {again.updated_at + BACKOFF[0]:%Y-%m-%d %H:%M} UTC (retry 1 of 3)" in shown.out


@pytest.mark.parametrize("cause, transient", [
    ("failures", True),  # 5xx answers in a row: an outage
    ("quota", True),
    ("bad key", False),
    ("user", False),  # Ctrl-C
])
def test_only_a_pause_time_fixes_is_retried(cause, transient, resend_settings, subs, readers, fake_resend,
                                           monkeypatch):
    stop = threading.Event()
    if cause == "failures":
        fake_resend.switches.fail_next = 1000
    elif cause == "quota":
        fake_resend.switches.quota = "daily"
    elif cause == "bad key":
        monkeypatch.setenv("RESEND_API_KEY", "re_revoked")
    else:
        stop.set()
    ledger, run, digest, variants = start(resend_settings, subs)
    run = send.deliver(resend_settings, ledger, run, variants, stop=stop)
    assert run.status == RunStatus.PAUSED and run.transient is transient, run.reason

    fake_resend.switches.fail_next, fake_resend.switches.quota = 0, None
    monkeypatch.setenv("RESEND_API_KEY", fake_resend.state.api_key)
    ended = retry_paused(resend_settings, subs.engine, now=run.updated_at + dt.timedelta(days=1))
    if transient:
        assert [r.status for r in ended] == [RunStatus.FINISHED]
        assert to_readers(fake_resend) == Counter({email: 1 for email in readers})
    else:
        assert ended == [] and ledger.run(run.id).status == RunStatus.PAUSED
        assert ledger.run(run.id).reason == run.reason and to_readers(fake_resend) == Counter()


def test_two_schedulers_never_both_take_one_retry(resend_settings, subs, readers, fake_resend):
    fake_resend.switches.quota = "daily"
    ledger, run, digest, variants = start(resend_settings, subs)
    run = send.deliver(resend_settings, ledger, run, variants)
    assert Ledger(subs.engine).take_retry(run) is True
    assert Ledger(subs.engine).take_retry(run) is False, "the second look finds the retry taken"
    # The first scheduler's retry paused again at once; the second still holds the old look.
    ledger.set_status(run.id, RunStatus.PAUSED, run.reason, transient=True)
    assert Ledger(subs.engine).take_retry(run) is False, "a look at an earlier pause takes no later retry"
    assert Ledger(subs.engine).take_retry(ledger.run(run.id)) is True


def test_the_scheduler_process_retries_a_paused_run_whose_wait_is_over(tmp_path, session_settings, fake_resend):
    import sqlalchemy as sa

    from newsletter.store import send_runs

    url = f"sqlite:///{tmp_path / 'subscribers.db'}"
    settings = session_settings.with_overrides(provider="resend", batch_size=4, send_rate=1000.0,
                                               database_url=url, secret_key_file=tmp_path / "newsletter.key")
    from newsletter.subscribers import Subscribers

    subs = Subscribers.open(url, settings.categories)
    for email in READERS:
        subs.add(email, consent=Consent(ConsentMethod.CLI))
    fake_resend.switches.quota = "daily"
    ledger, run, digest, variants = start(settings, subs)
    run = send.deliver(settings, ledger, run, variants)
    assert run.status == RunStatus.PAUSED and run.transient
    fake_resend.switches.quota = None
    with subs.engine.begin() as conn:  # it paused 16 minutes ago
        conn.execute(sa.update(send_runs).values(updated_at=run.updated_at - dt.timedelta(minutes=16)))

    env = scheduler_env(url, **resend_env(fake_resend, "50"),
                        NEWSLETTER_SECRET_KEY_FILE=str(tmp_path / "newsletter.key"))
    env.pop("NEWSLETTER_SECRET_KEY")
    scheduler = SchedulerProcess(env)
    scheduler.wait_for(lambda: ledger.run(run.id).status == RunStatus.FINISHED, "retried run")
    assert scheduler.stop() == 0
    assert f"retrying run {run.id} of issue" in scheduler.log or f"retrying run {run.id} of" in scheduler.log
    assert to_readers(fake_resend) == Counter({email: 1 for email in READERS})
    subs.close()


# -- notifications ---------------------------------------------------------------------------------

@pytest.fixture
def outbox_settings(settings, tmp_path, monkeypatch, db_url):
    """The outbox, a digests folder of the test's own, and the writer to notify."""
    monkeypatch.delenv("NEWSLETTER_SECRET_KEY", raising=False)
    (tmp_path / "digests").mkdir()
    return settings.with_overrides(provider=None, outbox_dir=tmp_path / "outbox", batch_size=4,
                                   send_rate=1000.0, database_url=db_url, digests_dir=tmp_path / "digests",
                                   secret_key_file=tmp_path / "newsletter.key", notify=WRITER)


def written_to_writer(settings) -> list:
    """The notifications in the outbox, as parsed messages."""
    found = []
    for path in sorted(settings.outbox_dir.glob("*.eml")) if settings.outbox_dir.exists() else []:
        if not path.is_file():
            continue
        message = message_from_bytes(path.read_bytes(), policy=policy.default)
        if message["To"] == WRITER:
            found.append(message)
    return found


def test_a_finished_scheduled_send_tells_the_writer_the_counts_per_variant(outbox_settings, subs, readers):
    ready_copy(outbox_settings.digests_dir, "2026-01-05-first", "2026-01-05")
    report = send_due(outbox_settings, subs, Ledger(subs.engine), today=dt.date(2026, 1, 5))
    (run, counts), = report.runs
    assert run.status == RunStatus.FINISHED and counts["sent"] == len(readers)

    (note,) = written_to_writer(outbox_settings)
    assert note["Subject"] == f"[{outbox_settings.name}] Sent: {run.subject}"
    assert note["From"] == outbox_settings.sender
    text = note.get_body(("plain",)).get_content()
    assert f"2026-01-05-first went out (run {run.id}, via outbox)" in text
    assert f"sent {len(readers)}, failed 0, skipped 0 of {len(readers)} readers" in text
    assert "every story (readers with no categories): sent 6, failed 0" in text
    assert "  AI Tech: sent 6, failed 0, skipped 0" in text
    assert len([p for p in outbox_settings.outbox_dir.glob("*.eml")]) == len(readers) + 1


def test_a_scheduled_send_that_pauses_tells_the_writer_why_and_when_it_goes_on(outbox_settings, subs, readers):
    from newsletter.providers import Message
    from newsletter.providers.outbox import OutboxProvider

    # An outbox that refuses every reader's file (a folder stands where each would go), as a full
    # or broken disk would: the run pauses after max_failures, the writer's note still gets through.
    blocked = OutboxProvider(outbox_settings.outbox_dir)
    for delivery in range(1, len(readers) + 1):
        for email in readers:
            blocked.path_for(Message(key=f"r1-{delivery}", to=email, sender="", subject="", html="",
                                     text="")).mkdir(parents=True)
    settings = outbox_settings.with_overrides(max_failures=2)
    ready_copy(settings.digests_dir, "2026-01-05-first", "2026-01-05")
    report = send_due(settings, subs, Ledger(subs.engine), today=dt.date(2026, 1, 5))
    (run, counts), = report.runs
    assert run.status == RunStatus.PAUSED and run.transient and counts["sent"] == 0

    (note,) = written_to_writer(settings)
    assert note["Subject"] == f"[{settings.name}] Paused: {run.subject}"
    text = note.get_body(("plain",)).get_content()
    assert f"Sending 2026-01-05-first (run {run.id}, via outbox) paused: 2 failed requests in a row" in text
    assert "cannot write to the outbox" in text and f"{len(readers)} not sent yet" in text
    assert f"tries again at {run.updated_at + BACKOFF[0]:%Y-%m-%d %H:%M} UTC (retry 1 of 3)" in text
    assert f"    newsletter --config {settings.config_path} resume {run.id}\r\n" in text


def test_a_day_with_nothing_ready_tells_the_writer_so(outbox_settings, subs, readers):
    ready_copy(outbox_settings.digests_dir, "2026-02-02-later", "2026-02-02")
    report = send_due(outbox_settings, subs, Ledger(subs.engine), today=dt.date(2026, 1, 26))
    assert report.nothing_ready and report.runs == []
    (note,) = written_to_writer(outbox_settings)
    assert note["Subject"] == f"[{outbox_settings.name}] Nothing to send on Monday 26 January"
    text = note.get_body(("plain",)).get_content()
    assert "Nothing was sent on Monday 2026-01-26" in text and "for a later date: 2026-02-02-later" in text
    assert [p.name for p in outbox_settings.outbox_dir.glob("*.eml")] == [p.name for p in
                                                                         outbox_settings.outbox_dir.glob("notify-*")]


def test_a_digest_failing_its_checks_is_reported_with_file_and_line(outbox_settings, subs, readers):
    ready_copy(outbox_settings.digests_dir, "2026-01-05-broken", "2026-01-05", extra="\nSee [^undefined-note].\n")
    report = send_due(outbox_settings, subs, Ledger(subs.engine), today=dt.date(2026, 1, 5))
    assert report.failed and not report.runs
    (note,) = written_to_writer(outbox_settings)
    assert note["Subject"] == f"[{outbox_settings.name}] Not sent: 1 digest failed the checks"
    text = note.get_body(("plain",)).get_content()
    assert re.search(r"2026-01-05-broken\.md:\d+: .*undefined-note", text), text


def test_without_notify_the_writer_gets_nothing(outbox_settings, subs, readers):
    quiet = outbox_settings.with_overrides(notify=None)
    send_due(quiet, subs, Ledger(subs.engine), today=dt.date(2026, 1, 26))
    assert written_to_writer(quiet) == []


def test_a_paused_send_tells_the_writer_why_and_how_to_resume(resend_settings, subs, readers, fake_resend):
    fake_resend.switches.fail_next = 3  # an outage: two failed requests pause the run (max_failures 2)
    ledger, run, digest, variants = start(resend_settings, subs)
    run = send.deliver(resend_settings, ledger, run, variants)
    assert run.status == RunStatus.PAUSED and run.transient

    from newsletter.schedule import tell

    tell(resend_settings, ledger, run)  # what the scheduler does with a run it sent
    (subject, text), = notes(fake_resend)
    assert subject == f"[{resend_settings.name}] Paused: {run.subject}"
    assert f"(run {run.id}, via resend) paused: 2 failed requests in a row" in text
    when = run.updated_at + BACKOFF[0]
    assert f"The scheduler tries again at {when:%Y-%m-%d %H:%M} UTC (retry 1 of 3)" in text
    assert f"newsletter --config {resend_settings.config_path} resume {run.id}" in text

    ledger.set_status(run.id, RunStatus.PAUSED, send.PAUSED_BY_SCHEDULER)
    tell(resend_settings, ledger, ledger.run(run.id))
    assert len(notes(fake_resend)) == 1, "a scheduler that stops resumes the run at its next start: no news"

    ledger.set_status(run.id, RunStatus.PAUSED, "the provider refused the request: bad key")
    tell(resend_settings, ledger, ledger.run(run.id))
    (_first, (subject, text)) = notes(fake_resend)
    assert "It stays paused until you resume it" in text and "tries again" not in text


def test_a_notification_the_provider_refuses_is_logged_and_changes_nothing(resend_settings, subs, readers,
                                                                          fake_resend, caplog):
    fake_resend.switches.quota = "daily"
    ledger, run, digest, variants = start(resend_settings, subs)
    run = send.deliver(resend_settings, ledger, run, variants)
    from newsletter.schedule import tell

    with caplog.at_level("ERROR", logger="newsletter.notify"):
        tell(resend_settings, ledger, run)  # the quota refuses the notification too
    assert notes(fake_resend) == []
    assert any("not sent to the writer" in r.getMessage() and "quota" in r.getMessage() for r in caplog.records)
    assert ledger.run(run.id).status == RunStatus.PAUSED and next_retry(ledger.run(run.id)) is not None
