"""Schedules in the database and the pass that sends what is due."""

from __future__ import annotations

import datetime as dt
import os
import re
from collections import Counter
from zoneinfo import ZoneInfo

import pytest

from newsletter.ledger import Ledger, RunStatus
from newsletter.schedule import ScheduleError, Schedules, once_trigger, parse_weekly, weekly_trigger
from newsletter.subscribers import Consent, ConsentMethod, Subscribers

from .conftest import EXAMPLE

UTC = dt.timezone.utc


def fires(trigger, after: dt.datetime, count: int) -> list[dt.datetime]:
    """The next `count` fire times after `after`, computed by the trigger itself (no clock)."""
    times, previous, now = [], None, after
    for _ in range(count):
        previous = trigger.get_next_fire_time(previous, now)
        times.append(previous)
        now = previous
    return times


@pytest.mark.parametrize("tz, spring, autumn", [
    ("Europe/Berlin", dt.date(2026, 3, 29), dt.date(2026, 10, 25)),
    ("America/New_York", dt.date(2026, 3, 8), dt.date(2026, 11, 1)),
])
def test_08_00_local_stays_08_00_local_across_daylight_saving(tz, spring, autumn):
    zone = ZoneInfo(tz)
    trigger = weekly_trigger("mon", "08:00", tz)
    for change in (spring, autumn):
        start = dt.datetime.combine(change - dt.timedelta(days=10), dt.time(9), zone)
        times = fires(trigger, start, 3)
        assert [t.astimezone(zone).strftime("%a %H:%M") for t in times] == ["Mon 08:00"] * 3
        offsets = {t.astimezone(zone).utcoffset() for t in times}
        assert len(offsets) == 2, f"the UTC time moves with the clocks around {change}"
    sunday = weekly_trigger("sun", "02:30", "Europe/Berlin")  # a time that does not exist once a year
    (first,) = fires(sunday, dt.datetime(2026, 3, 28, 12, tzinfo=UTC), 1)
    assert first.astimezone(UTC) < dt.datetime(2026, 3, 30, tzinfo=UTC), "the skipped hour still sends that day"


def test_bad_schedules_are_one_line_errors():
    for args, message in [(("mon", "25:00", "UTC"), "HH:MM"), (("someday", "08:00", "UTC"), "day must be"),
                          (("mon", "08:00", "Mars/Olympus"), "unknown time zone")]:
        with pytest.raises(ScheduleError, match=message):
            weekly_trigger(*args)
    with pytest.raises(ScheduleError, match="DAY HH:MM ZONE"):
        parse_weekly("monday 8am")
    with pytest.raises(ScheduleError, match="YYYY-MM-DD HH:MM"):
        once_trigger("next tuesday", "UTC")


def test_schedules_survive_a_restart_and_can_be_paused_and_removed(db_url, session_settings, tmp_path):
    subs = Subscribers.open(db_url, session_settings.categories)
    Schedules(subs.engine).set_weekly(weekly_trigger("fri", "07:30", "America/New_York"))
    Schedules(subs.engine).add_once(EXAMPLE, once_trigger("2030-01-02 09:00", "Europe/Berlin"))
    subs.close()

    again = Subscribers.open(db_url, session_settings.categories)  # a new process, as after a restart
    schedules = Schedules(again.engine)
    listed = {item.id: item for item in schedules.list()}
    assert set(listed) >= {"weekly"} and len(listed) == 2
    weekly = listed["weekly"]
    assert weekly.next_run.strftime("%a %H:%M") == "Fri 07:30" and str(weekly.next_run.tzinfo) == "America/New_York"
    once = next(item for item in listed.values() if item.id != "weekly")
    assert once.what == EXAMPLE.name
    assert once.next_run_utc == dt.datetime(2030, 1, 2, 8, 0, tzinfo=UTC)
    assert once.next_run.strftime("%H:%M") == "09:00" and str(once.next_run.tzinfo) == "Europe/Berlin"

    assert schedules.pause("weekly").paused
    assert [i.paused for i in Schedules(again.engine).list() if i.id == "weekly"] == [True]
    assert not schedules.resume("weekly").paused
    schedules.remove(once.id)
    assert [item.id for item in schedules.list()] == ["weekly"]
    with pytest.raises(ScheduleError, match="no schedule 'nope'"):
        schedules.remove("nope")
    again.close()


def test_schedule_weekly_then_list_shows_the_next_monday_in_berlin_and_in_utc(run, monkeypatch, tmp_path):
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", f"sqlite:///{tmp_path / 'subscribers.db'}")
    assert run("db", "upgrade").code == 0
    added = run("schedule", "weekly", "--day", "mon", "--time", "08:00", "--tz", "Europe/Berlin")
    assert added.code == 0, added.err
    listed = run("schedule", "list")
    berlin = ZoneInfo("Europe/Berlin")
    now = dt.datetime.now(berlin)
    monday = now.date() + dt.timedelta(days=(7 - now.weekday()) % 7 or (7 if now.hour >= 8 else 0))
    expected = dt.datetime.combine(monday, dt.time(8), berlin)
    assert f"weekly: the due digests of digests_dir, next Mon {monday:%Y-%m-%d} 08:00" in listed.out
    assert f"({expected.astimezone(UTC):%H:%M} UTC)" in listed.out
    if now.month in (11, 12, 1, 2):  # winter time: Berlin is UTC+1
        assert "(07:00 UTC)" in listed.out
    bad = run("schedule", "weekly", "--day", "mon", "--time", "8 o'clock", "--tz", "Europe/Berlin")
    assert bad.code == 1 and bad.err.startswith("error: time must be HH:MM")


# -- send-due -------------------------------------------------------------------------------------

def ready_copy(folder, name: str, date: str, *, extra: str = "") -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    text = re.sub(r"^date: .*$", f"date: {date}\nstatus: ready", text, count=1, flags=re.M)
    (folder / f"{name}.md").write_text(text + extra, encoding="utf-8")


def test_send_due_sends_what_is_due_once_and_reports_what_it_cannot(run, monkeypatch, tmp_path, db_url,
                                                                   session_settings):
    digests = tmp_path / "digests"
    digests.mkdir()
    ready_copy(digests, "2026-01-05-first", "2026-01-05")
    ready_copy(digests, "2026-01-12-second", "2026-01-12")
    ready_copy(digests, "2026-01-19-broken", "2026-01-19", extra="\nSee [^undefined-note].\n")
    ready_copy(digests, "2999-01-01-future", "2999-01-01")
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", db_url)
    monkeypatch.setenv("NEWSLETTER_DIGESTS_DIR", str(digests))
    monkeypatch.setenv("NEWSLETTER_OUTBOX_DIR", str(tmp_path / "outbox"))
    subs = Subscribers.open(db_url, session_settings.categories)
    for i in range(3):
        subs.add(f"d{i}@example.com", consent=Consent(ConsentMethod.CLI))
    subs.close()

    first = run("send-due")
    assert first.code == 1  # one digest could not go: said, and the exit status says so
    assert "2026-01-19-broken.md:" in first.err and "undefined-note" in first.err
    assert "run 1 of 2026-01-05-first: finished" in first.out and "run 2 of 2026-01-12-second: finished" in first.out
    assert len(list((tmp_path / "outbox").glob("*.eml"))) == 6

    (digests / "2026-01-19-broken.md").unlink()
    second = run("send-due")
    assert second.code == 0, second.err
    assert "nothing ready to send" in second.out and "run " not in second.out
    assert len(list((tmp_path / "outbox").glob("*.eml"))) == 6


# -- the scheduler process ----------------------------------------------------------------------

class SchedulerProcess:
    """`newsletter scheduler` in a process of its own, its log lines gathered as they come."""

    def __init__(self, env: dict):
        import subprocess
        import sys
        import threading

        self.process = subprocess.Popen([sys.executable, "-m", "newsletter", "scheduler"], env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.process.stderr), daemon=True)
        self._reader.start()

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def wait_for(self, condition, what: str, seconds: float = 90) -> None:
        """Until `condition()` holds; fail at the deadline or if the scheduler ended."""
        import time

        deadline = time.monotonic() + seconds
        while not condition():
            assert self.process.poll() is None, self.log
            assert time.monotonic() < deadline, f"no {what} after {seconds:.0f} s: {self.log}"
            time.sleep(0.05)  # another process does the work: nothing to wait on but its effects

    def stop(self) -> int:
        """SIGTERM, as a service manager stops it; its exit status, once its output is read."""
        import signal

        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=60)
        self._reader.join(timeout=20)
        return code


def scheduler_env(url: str, **settings: str) -> dict:
    from .conftest import ROOT, TEST_KEY

    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    return env | {"NEWSLETTER_CONFIG": str(ROOT / "newsletter.toml"), "NEWSLETTER_DATABASE_URL": url,
                  "NEWSLETTER_SECRET_KEY": TEST_KEY, **settings}


def readers_and_issue(url: str, settings, tmp_path, readers: list[str], name: str = "issue") -> tuple:
    """`readers` in the database at `url`, and a copy of the example digest; (store, its path)."""
    subs = Subscribers.open(url, settings.categories)
    for email in readers:
        subs.add(email, consent=Consent(ConsentMethod.CLI))
    issue = tmp_path / f"{name}.md"
    issue.write_text(EXAMPLE.read_text(encoding="utf-8"), encoding="utf-8")
    return subs, issue


def resend_env(fake, rate: str) -> dict:
    return {"NEWSLETTER_PROVIDER": "resend", "NEWSLETTER_SEND_RATE": rate, "NEWSLETTER_BATCH_SIZE": "5",
            "RESEND_API_KEY": fake.state.api_key, "RESEND_API_URL": fake.url}


def test_the_scheduler_sends_a_late_job_within_the_grace_period_and_skips_an_older_one(tmp_path, session_settings):
    url = f"sqlite:///{tmp_path / 'subscribers.db'}"
    subs, late = readers_and_issue(url, session_settings, tmp_path, [f"s{i}@example.com" for i in range(3)],
                                   "late")
    stale = tmp_path / "stale.md"
    stale.write_text(late.read_text(encoding="utf-8"), encoding="utf-8")
    now = dt.datetime.now(UTC)
    schedules = Schedules(subs.engine)
    schedules.add_once(late, once_trigger((now - dt.timedelta(minutes=5)).strftime("%Y-%m-%d %H:%M"), "UTC"))
    schedules.add_once(stale, once_trigger((now - dt.timedelta(hours=7)).strftime("%Y-%m-%d %H:%M"), "UTC"))
    subs.close()

    scheduler = SchedulerProcess(scheduler_env(url, NEWSLETTER_OUTBOX_DIR=str(tmp_path / "outbox")))
    scheduler.wait_for(lambda: len(list((tmp_path / "outbox").glob("*.eml"))) >= 3
                       and any("late" in line and "done" in line for line in scheduler.lines), "late job")
    assert scheduler.stop() == 0
    log = scheduler.log
    assert "Traceback" not in log
    assert re.search(r"skipped once-stale-\S+: it was due at .* more than 6 hours ago", log), log
    assert "scheduler stopped" in log
    outbox = list((tmp_path / "outbox").glob("*.eml"))
    assert len(outbox) == 3 and all(p.name.startswith("r1-") for p in outbox)


def test_a_weekly_schedule_in_newsletter_toml_wins_over_the_command_line(run, tmp_path):
    from .conftest import ROOT

    toml = tmp_path / "newsletter.toml"
    base = (ROOT / "newsletter.toml").read_text(encoding="utf-8")
    base = "\n".join(line for line in base.split("\n") if not line.startswith("database_url"))
    toml.write_text('database_url = "sqlite:///subscribers.db"\n' + base
                    + '\n[schedule]\nweekly = "wed 06:15 America/New_York"\n', encoding="utf-8")
    assert run("--config", toml, "db", "upgrade").code == 0
    listed = run("--config", toml, "schedule", "list")
    assert listed.code == 0, listed.err
    assert "weekly: the due digests of digests_dir, next Wed" in listed.out and "06:15 EST" in listed.out

    refused = run("--config", toml, "schedule", "weekly", "--day", "mon", "--time", "08:00", "--tz", "UTC")
    assert refused.code == 1 and "declares the weekly schedule ('wed 06:15 America/New_York'); change it there" \
        in refused.err and refused.err.count("\n") == 1
    assert run("--config", toml, "schedule", "remove", "weekly").code == 1

    assert run("--config", toml, "schedule", "pause", "weekly").code == 0
    assert "next paused" in run("--config", toml, "schedule", "list").out  # a pause made here stays

    toml.write_text(toml.read_text(encoding="utf-8").replace("wed 06:15", "thu 07:45"), encoding="utf-8")
    assert "next Thu" in run("--config", toml, "schedule", "list").out and "07:45 EST" in \
        run("--config", toml, "schedule", "list").out  # the file changed: the file wins

    toml.write_text(toml.read_text(encoding="utf-8").replace("thu 07:45", "thursday morning"), encoding="utf-8")
    bad = run("--config", toml, "schedule", "list")
    assert bad.code == 1 and "newsletter.toml: key 'schedule' weekly: time must be HH:MM" in bad.err


def test_a_scheduler_stopped_mid_send_finishes_the_run_when_it_starts_again(tmp_path, session_settings,
                                                                            fake_resend):
    url = f"sqlite:///{tmp_path / 'subscribers.db'}"
    readers = [f"m{i:03d}@example.com" for i in range(60)]
    subs, issue = readers_and_issue(url, session_settings, tmp_path, readers)
    now = dt.datetime.now(UTC) - dt.timedelta(minutes=2)
    Schedules(subs.engine).add_once(issue, once_trigger(now.strftime("%Y-%m-%d %H:%M"), "UTC"))
    ledger = Ledger(subs.engine)
    env = scheduler_env(url, **resend_env(fake_resend, "4"))

    first = SchedulerProcess(env)
    first.wait_for(lambda: sum(fake_resend.addresses().values()) >= 10, "deliveries")
    assert first.stop() == 0
    (run,) = ledger.runs()
    assert run.status == RunStatus.PAUSED and run.reason == "paused: the scheduler stopped", first.log
    assert sum(fake_resend.addresses().values()) < len(readers)

    second = SchedulerProcess(env)
    second.wait_for(lambda: ledger.run(run.id).status == RunStatus.FINISHED, "finished run")
    assert second.stop() == 0
    assert f"resuming run {run.id}" in second.log
    assert fake_resend.addresses() == Counter({email: 1 for email in readers})
    assert len(ledger.runs()) == 1, "the one-off job did not run a second time"
    subs.close()


def test_two_schedulers_due_at_the_same_moment_send_every_reader_once(db_url, tmp_path, session_settings,
                                                                      fake_resend):
    readers = [f"t{i:03d}@example.com" for i in range(40)]
    subs, issue = readers_and_issue(db_url, session_settings, tmp_path, readers)
    when = dt.datetime.now(UTC) + dt.timedelta(seconds=20)  # both schedulers are up by then
    Schedules(subs.engine).add_once(issue, once_trigger(when.strftime("%Y-%m-%d %H:%M:%S"), "UTC"))
    ledger = Ledger(subs.engine)
    env = scheduler_env(db_url, **resend_env(fake_resend, "20"))
    # Both load the job before it is due, and both fire it at that moment.
    schedulers = [SchedulerProcess(env) for _ in range(2)]
    # Each scheduler that fired the job has said how it ended. One that looked a moment after the
    # other had taken the job from the store never fires it (APScheduler 3 does not coordinate);
    # one that fires it late is refused by the ledger, and stopping it waits for that.
    schedulers[0].wait_for(lambda: ledger.runs() and ledger.runs()[0].status == RunStatus.FINISHED
                           and all(any(" done" in line or "not sent" in line for line in s.lines)
                                   for s in schedulers if "job fired" in s.log), "finished run", seconds=120)
    assert all(s.process.poll() is None for s in schedulers), "".join(s.log for s in schedulers)
    assert [s.stop() for s in schedulers] == [0, 0]
    assert fake_resend.addresses() == Counter({email: 1 for email in readers})
    assert len(ledger.runs()) == 1
    log = "".join(s.log for s in schedulers)
    assert all("schedule once-issue" in s.log for s in schedulers), log  # both had the job
    assert all(" done" in s.log or "not sent" in s.log for s in schedulers if "job fired" in s.log), log
    assert dt.datetime.now(UTC) > when
    assert "Traceback" not in log, log  # the scheduler that lost the race goes on working
    subs.close()
