"""Schedules: when the weekly send and one-off sends happen, kept in APScheduler 3's SQLAlchemy job
store in the readers' database, so they survive restarts and every process sees the same ones.

    weekly     every week on a day, at a local time in an IANA zone (08:00 stays 08:00 local
               across daylight-saving changes): sends the digests that are due (`due.py`)
    once-...   one digest file at one moment

The scheduler process also tries again, with backoff (`BACKOFF`), every run paused for a reason
time may fix (a daily quota, an outage, a run of failed requests), with `notify` set it emails
the writer how each send it made ended, and with `bounce_imap_host` set it reads the bounce
mailbox every `bounce_fetch_minutes` (`mailbox.py`).

The jobs name their work by reference (`newsletter.schedule:run_weekly`, `run_once`); the
scheduler process (`newsletter scheduler`) runs them. Declared in newsletter.toml
(`[schedule] weekly = "mon 08:00 Europe/Berlin"`), the weekly schedule is the file's: the
command line cannot change it, and the scheduler writes it to the store at start.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy.engine import Engine

from . import notify
from .errors import NewsletterError
from .store import raw_errors, utcnow

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
WEEKLY = "weekly"
TIME_RE = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")
RUN_WEEKLY = "newsletter.schedule:run_weekly"
RUN_ONCE = "newsletter.schedule:run_once"
# After a pause that time may fix, the scheduler tries the run again this long after each pause;
# after the last, the run stays paused for someone to look (`newsletter resume`).
BACKOFF = (dt.timedelta(minutes=15), dt.timedelta(hours=1), dt.timedelta(hours=4))
RETRIES = "retries"  # the scheduler's own job that looks for runs to retry (kept in memory)
RETRY_EVERY = 60  # seconds between two looks
BOUNCES = "bounces"  # the scheduler's own job that reads the bounce mailbox (kept in memory)


class ScheduleError(NewsletterError):
    pass


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(f"unknown time zone {name!r} (an IANA name like Europe/Berlin or "
                            "America/New_York)") from None


def weekly_trigger(day: str, time: str, tz: str):
    """Every `day` (mon..sun) at `time` (HH:MM) local time in `tz`."""
    from apscheduler.triggers.cron import CronTrigger

    day = day.strip().lower()[:3]
    if day not in DAYS:
        raise ScheduleError(f"day must be one of {', '.join(DAYS)}, got {day!r}")
    match = TIME_RE.match(time.strip())
    if match is None:
        raise ScheduleError(f"time must be HH:MM (24-hour), got {time!r}")
    return CronTrigger(day_of_week=day, hour=int(match.group(1)), minute=int(match.group(2)),
                       timezone=zone(tz))


def parse_weekly(text: str):
    """`mon 08:00 Europe/Berlin`, as newsletter.toml writes it."""
    parts = text.split()
    if len(parts) != 3:
        raise ScheduleError(f"a weekly schedule is 'DAY HH:MM ZONE', like 'mon 08:00 Europe/Berlin', "
                            f"got {text!r}")
    return weekly_trigger(*parts)


def once_trigger(at: str, tz: str):
    """At `at` (YYYY-MM-DD HH:MM) local time in `tz`."""
    from apscheduler.triggers.date import DateTrigger

    try:
        moment = dt.datetime.fromisoformat(at.strip())
    except ValueError:
        raise ScheduleError(f"--at must be 'YYYY-MM-DD HH:MM', got {at!r}") from None
    if moment.tzinfo is not None:
        raise ScheduleError("give --at as a local time and the zone with --tz")
    return DateTrigger(run_date=moment.replace(tzinfo=zone(tz)))


@dataclass(frozen=True)
class Scheduled:
    """A schedule as `schedule list` shows it."""

    id: str
    what: str
    next_run: dt.datetime | None  # in the schedule's own zone; None: paused
    paused: bool

    @property
    def next_run_utc(self) -> dt.datetime | None:
        return self.next_run.astimezone(dt.timezone.utc) if self.next_run else None


class Schedules:
    """The schedules in the readers' database (APScheduler's job store on `engine`)."""

    def __init__(self, engine: Engine):
        self.engine = engine

    @contextlib.contextmanager
    def _scheduler(self) -> Iterator:
        """A scheduler that never runs a job: started paused, so changes reach the store at once."""
        from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
        from apscheduler.schedulers.background import BackgroundScheduler

        class Editor(BackgroundScheduler):
            def _process_jobs(self):  # never runs a job, even in the moment it shuts down
                return None

        scheduler = Editor(jobstores={"default": SQLAlchemyJobStore(engine=raw_errors(self.engine))},
                           timezone=dt.timezone.utc)
        scheduler.start(paused=True)
        try:
            yield scheduler
        finally:
            scheduler.shutdown(wait=False)

    def set_weekly(self, trigger) -> Scheduled:
        with self._scheduler() as scheduler:
            return _scheduled(_add_weekly(scheduler, trigger))

    def follow(self, settings) -> None:
        """The weekly schedule newsletter.toml declares (`[schedule] weekly`) wins: it is written
        to the store whenever the stored one differs (a pause made with the CLI stays)."""
        if not settings.schedule:
            return
        trigger = parse_weekly(settings.schedule)
        with self._scheduler() as scheduler:
            job = scheduler.get_job(WEEKLY)
            if job is None or str(job.trigger) != str(trigger) or job.args != (str(trigger.timezone),):
                _add_weekly(scheduler, trigger)

    def add_once(self, file: Path, trigger) -> Scheduled:
        path = file.resolve()
        moment = trigger.run_date.astimezone(dt.timezone.utc).strftime("%Y%m%dT%H%M")
        job_id = f"once-{path.stem[:120]}-{moment}-{hashlib.sha256(str(path).encode()).hexdigest()[:6]}"
        with self._scheduler() as scheduler:
            job = scheduler.add_job(RUN_ONCE, trigger, args=[str(path)], id=job_id, name=str(path),
                                    replace_existing=True)
            return _scheduled(job)

    def list(self) -> list[Scheduled]:
        with self._scheduler() as scheduler:
            return [_scheduled(job) for job in scheduler.get_jobs()]

    def remove(self, job_id: str) -> None:
        with self._scheduler() as scheduler:
            self._job(scheduler, job_id)
            scheduler.remove_job(job_id)

    def pause(self, job_id: str) -> Scheduled:
        with self._scheduler() as scheduler:
            self._job(scheduler, job_id)
            return _scheduled(scheduler.pause_job(job_id))

    def resume(self, job_id: str) -> Scheduled:
        with self._scheduler() as scheduler:
            self._job(scheduler, job_id)
            return _scheduled(scheduler.resume_job(job_id))

    @staticmethod
    def _job(scheduler, job_id: str):
        job = scheduler.get_job(job_id)
        if job is None:
            raise ScheduleError(f"there is no schedule {job_id!r} (see `newsletter schedule list`)")
        return job


def _add_weekly(scheduler, trigger):
    return scheduler.add_job(RUN_WEEKLY, trigger, args=[str(trigger.timezone)], id=WEEKLY,
                             name="the due digests of digests_dir", replace_existing=True, coalesce=True)


def _scheduled(job) -> Scheduled:
    paused = job.next_run_time is None
    zone_of = getattr(job.trigger, "timezone", None) or getattr(getattr(job.trigger, "run_date", None),
                                                                 "tzinfo", None)
    next_run = job.next_run_time.astimezone(zone_of) if job.next_run_time and zone_of else job.next_run_time
    what = "the due digests of digests_dir" if job.id == WEEKLY else f"{Path(job.args[0]).name}"
    return Scheduled(job.id, what, next_run, paused)


# -- what the schedules send ----------------------------------------------------------------------

STOP = threading.Event()  # set by the scheduler process on SIGTERM: a send pauses after its batch
SENDING = threading.Lock()  # one send at a time in a scheduler process: one provider rate limit
SETTINGS: dict = {}  # the scheduler's settings (`--config` included), for the jobs it runs
log = logging.getLogger("newsletter.schedule")


@dataclass
class DueReport:
    """One pass of `send_due`: the runs it made, as they ended, and what it could not send."""

    runs: list = field(default_factory=list)  # (run, counts per delivery state)
    failed: list[str] = field(default_factory=list)  # one line each: file (and line), what is wrong
    nothing_ready: bool = False


def send_due(settings, subscribers, ledger, *, today: dt.date, stop: threading.Event | None = None) -> DueReport:
    """Send every digest that is due on `today` (`due.find_due`), oldest first, each through the
    same library send as `newsletter send`: one run each, exactly once. A digest that fails its
    checks, or cannot start a run, is reported and the others still go."""
    from .due import find_due

    report = DueReport()
    found = find_due(settings, ledger, today)
    for problem in found.failed:
        log.error("not sent: %s", problem)
        report.failed.append(str(problem))
    for slug in found.unfinished:
        log.info("%s has an unfinished run: it is resumed, never started again", slug)
    if not found.due:
        report.nothing_ready = not report.failed
        log.info("nothing ready to send on %s in %s", today.isoformat(), settings.digests_dir)
    else:
        send_digests(settings, subscribers, ledger, found.due, report, stop=stop)
    if report.nothing_ready:
        notify.nothing_ready(settings, today, not_yet=found.not_yet, unfinished=found.unfinished)
    if report.failed:
        notify.not_sent(settings, report.failed)
    return report


def send_digests(settings, subscribers, ledger, digests, report: DueReport, *,
                 stop: threading.Event | None = None) -> None:
    """A run for each digest, delivered in turn; failures to start one go into `report`."""
    from .providers import make_provider
    from .send import PAUSED_BY_SCHEDULER, deliver, start_run

    provider = make_provider(settings)  # before any run: a missing key opens no run
    try:
        for digest in digests:
            if stop is not None and stop.is_set():
                break
            try:
                run, variants, due = start_run(settings, digest, subscribers, ledger, provider=provider.name)
            except NewsletterError as e:
                log.error("not sent: %s: %s", digest.path, e)
                report.failed.append(f"{digest.path}: {e}")
                continue
            log.info("sending %s: run %d, %d readers", digest.slug, run.id, due.total)
            run = deliver(settings, ledger, run, variants, provider=provider, stop=stop,
                          stop_reason=PAUSED_BY_SCHEDULER)
            log.info("run %d of %s: %s%s", run.id, digest.slug, run.status.value,
                     f" ({run.reason})" if run.reason else "")
            report.runs.append((run, ledger.counts(run.id)))
            tell(settings, ledger, run)
    finally:
        provider.close()


@contextlib.contextmanager
def _store() -> Iterator:
    """The settings and the database, as the scheduler's environment names them."""
    from .config import load_settings
    from .ledger import Ledger
    from .subscribers import Subscribers

    settings = SETTINGS.get("current") or load_settings()
    subscribers = Subscribers.from_settings(settings, migrate=False, create=False)
    try:
        yield settings, subscribers, Ledger(subscribers.engine)
    finally:
        subscribers.close()


def run_weekly(tz: str) -> DueReport:
    """The weekly job: the digests due today in the schedule's zone."""
    today = dt.datetime.now(zone(tz)).date()
    log.info("weekly job fired: the digests due on %s", today.isoformat())
    with SENDING, _store() as (settings, subscribers, ledger):
        return send_due(settings, subscribers, ledger, today=today, stop=STOP)


def run_once(path: str) -> DueReport:
    """A one-off job: the digest at `path`, checked as `newsletter send` checks it."""
    from .digest import load_digest

    report = DueReport()
    log.info("one-off job fired: %s", path)
    with SENDING, _store() as (settings, subscribers, ledger):
        try:
            digest = load_digest(path, settings)
        except NewsletterError as e:
            log.error("not sent: %s", e)
            report.failed.append(str(e))
            notify.not_sent(settings, report.failed)
            return report
        send_digests(settings, subscribers, ledger, [digest], report, stop=STOP)
    return report


# -- the scheduler process ----------------------------------------------------------------------

def run_scheduler(settings, engine, done: threading.Event) -> None:
    """Run the schedules until `done` is set (SIGTERM, SIGINT): first resume every run a stopped
    process left sending, then fire each job when it is due. A job late by less than
    `misfire_grace_hours` still runs; later, it is skipped and logged; missed runs of one job
    coalesce into one. Every minute, runs paused for a reason time may fix are retried when their
    wait is over (`retry_paused`). Stopping pauses a send after the batch in flight."""
    from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, EVENT_JOB_MISSED
    from apscheduler.jobstores.base import JobLookupError
    from apscheduler.jobstores.memory import MemoryJobStore
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.background import BackgroundScheduler

    STOP.clear()
    SETTINGS["current"] = settings
    Schedules(engine).follow(settings)
    resume_interrupted(settings, engine)
    grace = max(1, settings.misfire_grace_hours * 3600)

    class Scheduler(BackgroundScheduler):
        def remove_job(self, job_id, jobstore=None):
            try:
                super().remove_job(job_id, jobstore)
            except JobLookupError:  # another scheduler ran this one-off job and removed it first
                log.info("%s was already removed by another scheduler", job_id)

    scheduler = Scheduler(jobstores={"default": SQLAlchemyJobStore(engine=raw_errors(engine)),
                                     "local": MemoryJobStore()},  # this process's own jobs
                          timezone=dt.timezone.utc,
                          job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": grace})

    def report(event) -> None:
        if event.code == EVENT_JOB_MISSED:
            log.warning("skipped %s: it was due at %s, more than %d hours ago", event.job_id,
                        event.scheduled_run_time.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                        settings.misfire_grace_hours)
        elif event.code == EVENT_JOB_ERROR:
            log.error("%s failed: %s", event.job_id, event.exception)
        elif event.job_id not in (RETRIES, BOUNCES):  # these log what they did themselves
            log.info("%s done", event.job_id)

    scheduler.add_listener(report, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR | EVENT_JOB_MISSED)
    scheduler.start(paused=True)
    for job in scheduler.get_jobs(jobstore="default"):  # today's grace and coalescing, whatever it was stored with
        job.modify(misfire_grace_time=grace, coalesce=True)
        log.info("schedule %s: next %s", job.id, job.next_run_time.isoformat() if job.next_run_time else "paused")
    add_own_jobs(scheduler, settings)
    scheduler.resume()
    try:
        done.wait()
    finally:
        STOP.set()  # a send in flight pauses after its batch
        scheduler.shutdown(wait=True)
        log.info("scheduler stopped")


def add_own_jobs(scheduler, settings) -> None:
    """The scheduler process's own jobs, first run at once: the look for runs to retry, and,
    with a bounce mailbox configured, reading it every `bounce_fetch_minutes`."""
    now = dt.datetime.now(dt.timezone.utc)
    scheduler.add_job(_retry_job, "interval", seconds=RETRY_EVERY, id=RETRIES, jobstore="local",
                      next_run_time=now)
    if settings.bounce_imap_host:
        scheduler.add_job(fetch_bounces, "interval", minutes=settings.bounce_fetch_minutes, id=BOUNCES,
                          jobstore="local", next_run_time=now)


def resume_interrupted(settings, engine) -> None:
    """Resume every run left `sending` by a process that stopped (crashed, killed, restarted), and
    every run a stopping scheduler paused; a run another process holds is its own to finish, and
    a run paused for any other reason (Ctrl-C, a bad key) is left alone."""
    from .ledger import Ledger, RunStatus
    from .send import PAUSED_BY_SCHEDULER

    ledger = Ledger(engine)
    for run in ledger.runs():
        interrupted = run.status == RunStatus.SENDING or (
            run.status == RunStatus.PAUSED and run.reason == PAUSED_BY_SCHEDULER)
        if not interrupted or STOP.is_set():
            continue
        log.info("resuming run %d of %s", run.id, run.issue)
        _resume(settings, ledger, run)


def next_retry(run) -> dt.datetime | None:
    """When the scheduler tries paused `run` again; None if it does not (not paused, paused for a
    reason time does not fix, or retried `len(BACKOFF)` times already)."""
    from .ledger import RunStatus

    if run.status != RunStatus.PAUSED or not run.transient or run.auto_retries >= len(BACKOFF):
        return None
    return (run.updated_at or utcnow()) + BACKOFF[run.auto_retries]


def retry_paused(settings, engine, *, now: dt.datetime | None = None) -> list:
    """One look for runs paused for a reason time may fix whose wait (`BACKOFF`) is over: each is
    resumed (its retry counted first, so two schedulers never both take one) and the runs as they
    ended are returned. A run paused by the user or for a lasting reason is never touched."""
    from .ledger import Ledger

    now = now or utcnow()
    ledger = Ledger(engine)
    ended = []
    for run in ledger.runs():
        when = next_retry(run)
        if when is None or when > now or STOP.is_set():
            continue
        if not ledger.take_retry(run):
            continue  # another scheduler took this retry, or the run changed meanwhile
        log.info("retrying run %d of %s (retry %d of %d), paused %s: %s", run.id, run.issue,
                 run.auto_retries + 1, len(BACKOFF), f"{run.updated_at:%Y-%m-%d %H:%M} UTC", run.reason)
        result = _resume(settings, ledger, run)
        if result is not None:
            ended.append(result)
    return ended


def _resume(settings, ledger, run):
    """Resume `run` for the scheduler, log and tell the writer how it ended; None if it could not."""
    from .errors import RunBusy
    from .send import PAUSED_BY_SCHEDULER, resume

    try:
        ended = resume(settings, ledger, run.id, stop=STOP, stop_reason=PAUSED_BY_SCHEDULER)
    except RunBusy:
        log.info("run %d is being sent by another process", run.id)
        return None
    except NewsletterError as e:
        log.error("run %d not resumed: %s", run.id, e)
        notify.send_notification(settings, f"Not resumed: {run.subject}", [
            f"The scheduler could not resume run {run.id} of {run.issue}: {e}", "",
            "It stays paused. Once the cause is fixed:", "", f"    {notify.resume_command(settings, run)}"])
        return None
    log.info("run %d of %s: %s%s", ended.id, ended.issue, ended.status.value,
             f" ({ended.reason})" if ended.reason else "")
    tell(settings, ledger, ended)
    return ended


def tell(settings, ledger, run) -> None:
    """Notify the writer how a run the scheduler sent ended (not when the scheduler itself stopped
    it: the next start resumes it)."""
    from .send import PAUSED_BY_SCHEDULER

    if run.reason == PAUSED_BY_SCHEDULER:
        return
    when = next_retry(run)
    if when is not None:
        log.info("run %d: the scheduler tries again at %s", run.id, f"{when:%Y-%m-%d %H:%M} UTC")
    notify.run_ended(settings, ledger, run, retry_at=when, retries=run.auto_retries)


def _retry_job() -> None:
    """The scheduler's look for runs to retry; it waits for no send (the next look comes soon)."""
    if not SENDING.acquire(blocking=False):
        return
    try:
        with _store() as (settings, subscribers, _ledger):
            retry_paused(settings, subscribers.engine)
    finally:
        SENDING.release()


def fetch_bounces():
    """The scheduler's read of the bounce mailbox: its counts logged and returned; a failure (the
    server unreachable, the login refused) logged as one line, and the next read comes all the same."""
    from .mailbox import fetch_reports

    try:
        with _store() as (settings, subscribers, _ledger):
            fetched = fetch_reports(settings, subscribers.engine)
    except NewsletterError as e:
        log.error("bounce mailbox not read: %s", e)
        return None
    log.info("bounce mailbox: %s", fetched)
    return fetched
