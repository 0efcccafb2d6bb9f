"""`newsletter scheduler` reads the bounce mailbox every `bounce_fetch_minutes` when one is set."""

from __future__ import annotations

import datetime as dt
import logging

import pytest
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.background import BackgroundScheduler

from newsletter import schedule
from newsletter.mailbox import PASSWORD_VAR
from newsletter.schedule import BOUNCES, RETRIES, add_own_jobs, fetch_bounces
from newsletter.subscribers import Consent, ConsentMethod, Status, Subscribers

from .test_bounces import dsn
from .test_bounces_mailbox import settings_for
from .test_schedule import SchedulerProcess, scheduler_env


@pytest.mark.parametrize("host, minutes", [("imap.example.com", 7), (None, 5)])
def test_the_bounce_job_exists_only_with_a_mailbox_configured(session_settings, host, minutes):
    settings = session_settings.with_overrides(bounce_imap_host=host, bounce_fetch_minutes=minutes)
    scheduler = BackgroundScheduler(jobstores={"local": MemoryJobStore()}, timezone=dt.timezone.utc)
    add_own_jobs(scheduler, settings)
    assert scheduler.get_job(RETRIES) is not None
    job = scheduler.get_job(BOUNCES)
    if host is None:
        assert job is None
        return
    assert job.func is fetch_bounces and job.trigger.interval == dt.timedelta(minutes=7)
    assert job.next_run_time <= dt.datetime.now(dt.timezone.utc), "the first read is at start"


@pytest.fixture
def job_settings(subs, db_url, imap_account, session_settings, monkeypatch):
    """The settings the scheduler's jobs use, with the mailbox set and its password in the environment."""
    monkeypatch.setenv(PASSWORD_VAR, imap_account.password)
    settings = settings_for(session_settings, imap_account, db_url)
    monkeypatch.setitem(schedule.SETTINGS, "current", settings)
    return settings


def test_the_job_reads_the_mailbox_and_a_failure_is_one_line_and_no_exception(job_settings, subs, imap_account,
                                                                               monkeypatch, caplog):
    subs.add("ana@example.com", consent=Consent(ConsentMethod.CLI))
    imap_account.append("INBOX", dsn(b"To: ana@example.com\r\n\r\nhi\r\n", "ana@example.com", "5.1.1", None))
    with caplog.at_level(logging.INFO, logger="newsletter.schedule"):
        fetched = fetch_bounces()
    assert (fetched.read, fetched.stored, fetched.stopped) == (1, 1, 1)
    assert subs.get("ana@example.com").status == Status.BOUNCED
    assert "bounce mailbox: 1 message read: 1 report stored" in caplog.text

    caplog.clear()
    monkeypatch.setenv(PASSWORD_VAR, "wrong")
    with caplog.at_level(logging.INFO, logger="newsletter.schedule"):
        assert fetch_bounces() is None
    [line] = [r for r in caplog.records if r.name == "newsletter.schedule"]
    assert line.levelno == logging.ERROR and "\n" not in line.getMessage()
    assert line.getMessage().startswith("bounce mailbox not read: bounce mailbox 127.0.0.1:")
    assert "login refused" in line.getMessage() and "wrong" not in line.getMessage()


def test_the_scheduler_process_reads_the_mailbox_at_start(tmp_path, session_settings, imap_account):
    url = f"sqlite:///{tmp_path / 'subscribers.db'}"
    subs = Subscribers.open(url, session_settings.categories)
    subs.add("ana@example.com", consent=Consent(ConsentMethod.CLI))
    imap_account.append("INBOX", dsn(b"To: ana@example.com\r\n\r\nhi\r\n", "ana@example.com", "5.1.1", None))
    scheduler = SchedulerProcess(scheduler_env(
        url, NEWSLETTER_BOUNCE_IMAP_HOST="127.0.0.1", NEWSLETTER_BOUNCE_IMAP_PORT=str(imap_account.port),
        NEWSLETTER_BOUNCE_IMAP_SECURITY="none", NEWSLETTER_BOUNCE_IMAP_USER=imap_account.user,
        NEWSLETTER_BOUNCE_PASSWORD=imap_account.password, NEWSLETTER_BOUNCE_FETCH_MINUTES="1"))
    try:
        scheduler.wait_for(lambda: "bounce mailbox:" in scheduler.log, "read of the bounce mailbox")
    finally:
        assert scheduler.stop() == 0
    assert "bounce mailbox: 1 message read: 1 report stored, 0 seen before, 1 reader stopped" in scheduler.log
    assert "Traceback" not in scheduler.log and "bounces done" not in scheduler.log
    assert subs.get("ana@example.com").status == Status.BOUNCED
    assert imap_account.messages("INBOX") == []
    subs.close()
