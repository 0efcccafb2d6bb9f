"""`newsletter schedule ...` and `newsletter send-due`: when issues go out by themselves."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import click

from .cli import App, cli, pass_app, plural
from .errors import ExitCode
from .ledger import Ledger
from .schedule import WEEKLY, ScheduleError, Schedules, once_trigger, send_due, weekly_trigger


def _when(moment: dt.datetime | None) -> str:
    return moment.strftime("%a %Y-%m-%d %H:%M %Z") if moment else "paused"


def _show(item) -> str:
    utc = f" ({item.next_run_utc:%H:%M} UTC)" if item.next_run else ""
    return f"{item.id}: {item.what}, next {_when(item.next_run)}{utc}"


def _not_declared(app: App) -> None:
    """The weekly schedule is newsletter.toml's when it declares one: the file wins."""
    if app.settings.schedule:
        raise ScheduleError(f"{app.settings.config_path or 'the settings'} declares the weekly schedule "
                            f"({app.settings.schedule!r}); change it there")


@cli.group()
def schedule() -> None:
    """When issues go out by themselves (run `newsletter scheduler` to send them)."""


@schedule.command()
@click.option("--day", required=True, type=click.Choice(["mon", "tue", "wed", "thu", "fri", "sat", "sun"]))
@click.option("--time", "time_", required=True, metavar="HH:MM", help="Local time in --tz.")
@click.option("--tz", required=True, metavar="ZONE", help="An IANA time zone, e.g. Europe/Berlin.")
@pass_app
def weekly(app: App, day: str, time_: str, tz: str) -> None:
    """Send the due digests of digests_dir every week on DAY at TIME (replaces the weekly schedule)."""
    _not_declared(app)
    item = Schedules(app.subscribers.engine).set_weekly(weekly_trigger(day, time_, tz))
    click.echo(_show(item))


@schedule.command()
@click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--at", "at", required=True, metavar="'YYYY-MM-DD HH:MM'", help="Local time in --tz.")
@click.option("--tz", default="UTC", show_default=True, metavar="ZONE", help="An IANA time zone.")
@pass_app
def once(app: App, file: Path, at: str, tz: str) -> None:
    """Send digest FILE once, at a given moment."""
    item = Schedules(app.subscribers.engine).add_once(file, once_trigger(at, tz))
    click.echo(_show(item))


@schedule.command(name="list")
@pass_app
def list_(app: App) -> None:
    """Every schedule: its id, what it sends, its next run in its own zone and in UTC."""
    schedules = Schedules(app.subscribers.engine)
    schedules.follow(app.settings)
    items = schedules.list()
    if not items:
        click.echo("no schedules (add one with `newsletter schedule weekly` or `schedule once`)")
    for item in items:
        click.echo(_show(item))


@schedule.command()
@click.argument("job_id", metavar="ID")
@pass_app
def remove(app: App, job_id: str) -> None:
    """Remove schedule ID."""
    if job_id == WEEKLY:
        _not_declared(app)
    Schedules(app.subscribers.engine).remove(job_id)
    click.echo(f"removed {job_id}")


@schedule.command()
@click.argument("job_id", metavar="ID")
@pass_app
def pause(app: App, job_id: str) -> None:
    """Pause schedule ID: it does not run until resumed."""
    click.echo(_show(Schedules(app.subscribers.engine).pause(job_id)))


@schedule.command(name="resume")
@click.argument("job_id", metavar="ID")
@pass_app
def resume_(app: App, job_id: str) -> None:
    """Resume schedule ID."""
    click.echo(_show(Schedules(app.subscribers.engine).resume(job_id)))


@cli.command(name="send-due")
@pass_app
def send_due_(app: App) -> None:
    """Send the digests that are due today (status: ready, date come, not sent) and exit: what the
    weekly schedule does, for cron. Run twice, the second pass sends nothing."""
    report = send_due(app.settings, app.subscribers, Ledger(app.subscribers.engine), today=dt.date.today())
    for run, counts in report.runs:
        click.echo(f"run {run.id} of {run.issue}: {run.status.value}; "
                   + ", ".join(f"{state} {n}" for state, n in counts.items()))
    if report.nothing_ready:
        click.echo("nothing ready to send")
    for line in report.failed:
        click.secho(f"error: not sent: {line}", fg="red", err=True)
    if report.failed:
        click.echo(f"{plural(len(report.failed), 'digest')} not sent", err=True)
        raise SystemExit(ExitCode.ERROR)


@cli.command()
@pass_app
def scheduler(app: App) -> None:
    """Run the schedules in the foreground (what a service manager keeps alive); SIGTERM or
    Ctrl-C stops it, pausing a send in flight after its current batch."""
    import logging
    import signal
    import sys
    import threading

    from .schedule import run_scheduler

    settings, engine = app.settings, app.subscribers.engine
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)  # each job checks the schema revision
    done = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: done.set())
    click.echo(f"scheduler running for {settings.name} (stop with Ctrl-C or SIGTERM)", err=True)
    run_scheduler(settings, engine, done)
