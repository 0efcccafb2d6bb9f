"""`newsletter send`, `newsletter runs`, `newsletter resume`."""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from . import send as sending
from .cli import App, cli, pass_app, plural, shown_path
from .digest import Digest, load_digest
from .errors import ExitCode
from .ledger import Ledger, Run, RunStatus
from .providers import Provider, check_provider, make_provider
from .schedule import BACKOFF, next_retry
from .send import PAUSED_BY_USER, Plan, Variant


def describe_variant(app: App, key: str) -> str:
    return sending.describe_variant(app.settings, key)


WORKERS = click.option("--workers", type=click.IntRange(0, 64), default=1, show_default=True,
                       help="Senders in this process; 0 leaves the sending to `newsletter worker` "
                            "processes (PostgreSQL).")


def check_workers(app: App, workers: int) -> None:
    """Anything but one sender needs PostgreSQL: said before any question."""
    if workers != 1 and app.subscribers.engine.dialect.name != "postgresql":
        raise click.UsageError(f"--workers {workers} needs PostgreSQL: on SQLite this process sends the run")


def left_to_workers(run: Run) -> None:
    click.echo(f"run {run.id} is left to `newsletter worker` processes; `newsletter runs {run.id}` "
               "shows how far they are")


def provider_for(app: App) -> Provider:
    if app.settings.provider is None:
        click.echo(f"no provider configured: writing .eml files to {shown_path(app.settings.outbox_dir)} "
                   "(set provider in newsletter.toml to send for real)", err=True)
    return make_provider(app.settings)


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--dry-run", is_flag=True, help="Render every variant and count readers; send nothing.")
@click.option("--test", "test_to", multiple=True, metavar="EMAIL",
              help="Send one copy of each variant to EMAIL only, outside the ledger; repeatable.")
@click.option("--again", is_flag=True, help="Send an issue that was already sent, to everyone, again.")
@WORKERS
@pass_app
def send(app: App, file: Path, yes: bool, dry_run: bool, test_to: tuple[str, ...], again: bool,
         workers: int) -> None:
    """Send digest FILE to every active reader whose categories it covers."""
    settings = app.settings
    check_workers(app, workers)
    check_provider(settings)  # a dry run says what the real send would fail on, before any question
    digest = load_digest(file, settings)
    for warning in digest.warnings:
        click.secho(f"warning: {warning}", fg="yellow", err=True)
    ledger = Ledger(app.subscribers.engine)
    in_ledger = not test_to and not dry_run  # test copies and dry runs need no run, so pass no check
    due = sending.plan_run(digest, app.subscribers, ledger if in_ledger else None, again=again)
    show_plan(app, digest.title, due, settings.provider or "outbox")
    if due.had_it:
        click.echo(f"{plural(due.had_it, 'reader')} had this issue from a cancelled run: left out "
                   "(--again sends to everyone)")
    variants = sending.prepare_variants(settings, digest, due)
    if test_to:
        send_tests(app, digest, variants, test_to)
        return
    if dry_run:
        for key, variant in variants.items():
            click.echo(f"rendered {key}: {variant.size / 1024:.1f} KB")
        click.echo("dry run: nothing was sent")
        return
    due.check_someone_due()
    if not yes:
        click.confirm(f"Send \"{digest.title}\" to {plural(due.total, 'reader')}?", abort=True)
    provider = provider_for(app)  # before the run exists: a provider that cannot be made leaves none
    try:
        run, variants, _ = sending.start_run(settings, digest, app.subscribers, ledger, again=again,
                                      provider=provider.name, due=due, variants=variants)
        click.echo(f"run {run.id} started")
        if not workers:
            left_to_workers(run)
            return
        deliver(app, ledger, provider, run, variants, senders=workers)
    finally:
        provider.close()


def show_plan(app: App, subject: str, due: Plan, provider: str) -> None:
    table = Table("variant", "readers", box=None)
    for key, count in due.per_variant.items():
        table.add_row(describe_variant(app, key), str(count))
    table.add_row("total", str(due.total), style="bold")
    click.echo(f"subject:  {subject}\nprovider: {provider}")
    Console(width=120, file=sys.stdout).print(table)
    if due.not_due:
        click.echo(f"{plural(due.not_due, 'active reader')} chose only categories this issue has no "
                   "story for: not sent")


def send_tests(app: App, digest: Digest, variants: dict[str, Variant], addresses: tuple[str, ...]) -> None:
    provider = provider_for(app)
    try:
        for message, outcome in sending.send_test_copies(app.settings, digest, variants, addresses, provider):
            state = "sent" if outcome.ok else f"failed: {outcome.error}"
            click.echo(f"test copy {message.tags['variant']} to {message.to}: {state}")
    finally:
        provider.close()


def deliver(app: App, ledger: Ledger, provider: Provider, run: Run, variants: dict[str, Variant],
            senders: int = 1) -> None:
    """Send a run with a progress bar, then report; Ctrl-C pauses after the batch in flight."""
    stop = threading.Event()

    def on_sigint(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        click.echo("\npausing after the batch in flight (Ctrl-C again to stop at once)", err=True)

    previous = signal.signal(signal.SIGINT, on_sigint)
    started = time.monotonic()
    columns = [TextColumn("sending"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[detail]}"), TimeRemainingColumn()]
    try:
        with Progress(*columns, console=Console(stderr=True), disable=not sys.stderr.isatty()) as bar:
            task = bar.add_task("send", total=None, detail="")

            def on_progress(p: sending.Progress) -> None:
                rate = p.sent / max(time.monotonic() - p.started, 1e-6)
                bar.update(task, total=p.total, completed=p.done,
                           detail=f"sent {p.sent} failed {p.failed} skipped {p.skipped} {rate:,.0f}/s")
            run = sending.deliver(app.settings, ledger, run, variants, provider=provider,
                                  on_progress=on_progress, stop=stop, senders=senders)
    except KeyboardInterrupt:  # the second Ctrl-C: the run keeps its batch in flight, and resume sends it
        click.secho(f"stopped at once: run {run.id} is not finished. Resume with `newsletter resume {run.id}`",
                    fg="yellow", err=True)
        raise SystemExit(ExitCode.INTERRUPTED) from None
    finally:
        signal.signal(signal.SIGINT, previous)
    report(ledger, run, time.monotonic() - started)


def report(ledger: Ledger, run: Run, seconds: float) -> None:
    counts = ledger.counts(run.id)
    click.echo(f"run {run.id}: sent {counts['sent']}, failed {counts['failed']}, skipped {counts['skipped']}, "
               f"queued {counts['queued'] + counts['sending']} ({seconds:.1f} s)")
    if counts["failed"]:
        click.echo(f"failed deliveries: `newsletter runs {run.id}` lists them")
    if run.status == RunStatus.PAUSED:
        click.secho(f"paused: {run.reason}. Resume with `newsletter resume {run.id}`", fg="yellow", err=True)
        raise SystemExit(ExitCode.INTERRUPTED if run.reason == PAUSED_BY_USER else ExitCode.ERROR)
    if run.status == RunStatus.FINISHED:
        click.echo(f"run {run.id} finished")
    elif run.status == RunStatus.SENDING:  # stopped without finishing, e.g. another process took over
        click.secho(f"run {run.id} is not finished. Resume with `newsletter resume {run.id}`",
                    fg="yellow", err=True)
        raise SystemExit(ExitCode.ERROR)


@cli.command()
@click.argument("run_id", type=int)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@WORKERS
@pass_app
def resume(app: App, run_id: int, yes: bool, workers: int) -> None:
    """Go on with send run RUN_ID after a pause, a crash or a provider failure."""
    check_workers(app, workers)
    ledger = Ledger(app.subscribers.engine)
    run, _, variants = sending.reopen_run(app.settings, ledger, run_id)
    check_provider(app.settings)  # what the resume would fail on, before the question
    ledger.forget_retries(run.id)  # a later pause gets the scheduler's retries afresh
    counts = ledger.counts(run.id)
    left = counts["queued"] + counts["sending"]
    if not yes:
        click.confirm(f"Resume run {run.id} ({run.issue}): {plural(left, 'reader')} left?", abort=True)
    if not workers:
        ledger.set_status(run.id, RunStatus.SENDING)
        left_to_workers(run)
        return
    provider = provider_for(app)
    try:
        deliver(app, ledger, provider, run, variants, senders=workers)  # refuses a provider other than the run's
    finally:
        provider.close()


class RunsGroup(click.Group):
    """`runs` lists, `runs RUN` shows one (short for `runs show RUN`), `runs cancel RUN` ends one."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0].isdigit():
            args = ["show", *args]
        return super().parse_args(ctx, args)


@cli.group(cls=RunsGroup, invoke_without_command=True)
@click.pass_context
def runs(ctx: click.Context) -> None:
    """List send runs with their counts; `runs RUN` shows one, `runs cancel RUN` ends one."""
    if ctx.invoked_subcommand is not None:
        return
    ledger = Ledger(ctx.find_object(App).subscribers.engine)
    table = Table("run", "issue", "status", "sent", "failed", "skipped", "queued", "started", box=None)
    for run in ledger.runs():
        c = ledger.counts(run.id)
        table.add_row(str(run.id), run.issue, run.status.value, str(c["sent"]), str(c["failed"]),
                      str(c["skipped"]), str(c["queued"] + c["sending"]), f"{run.created_at:%Y-%m-%d %H:%M}")
    Console(width=200).print(table)


@runs.command(name="cancel")
@click.argument("run_id", type=int)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_app
def runs_cancel(app: App, run_id: int, yes: bool) -> None:
    """End send run RUN_ID for good; a later `send` of the issue goes to the readers it did not reach."""
    ledger = Ledger(app.subscribers.engine)
    run = ledger.run(run_id)
    counts = ledger.counts(run.id)
    if not yes and run.status not in (RunStatus.FINISHED, RunStatus.CANCELLED):
        click.confirm(f"Cancel run {run.id} ({run.issue}, {run.status.value}): sent {counts['sent']}, "
                      f"{plural(counts['queued'] + counts['sending'], 'reader')} not yet?", abort=True)
    # A worker's request in flight is answered within request_timeout: wait that long for it.
    settle = app.settings.request_timeout + 5.0 if app.subscribers.engine.dialect.name == "postgresql" else 0.0
    flying = ledger.in_flight(run.id) if settle else 0
    if flying:
        click.echo(f"pausing run {run.id}; waiting up to {settle:.0f} s for {plural(flying, 'batch', 'batches')} "
                   "in flight to be answered", err=True)
    run = ledger.cancel(run.id, settle=settle)
    counts = ledger.counts(run.id)
    click.echo(f"run {run.id} cancelled: sent {counts['sent']}, failed {counts['failed']}, "
               f"skipped {counts['skipped']}")
    click.echo(f"`newsletter send {shown_path(Path(run.digest_path))}` sends {run.issue} to the readers "
               "this run did not reach")


@runs.command(name="show")
@click.argument("run_id", type=int)
@pass_app
def runs_show(app: App, run_id: int) -> None:
    """Show send run RUN_ID with its failed and skipped deliveries."""
    ledger = Ledger(app.subscribers.engine)
    run = ledger.run(run_id)
    c = ledger.counts(run.id)
    click.echo(f"run {run.id}: {run.issue} via {run.provider}, {run.status.value}"
               f"{f' ({run.reason})' if run.reason else ''}")
    click.echo(f"sent {c['sent']}, failed {c['failed']}, skipped {c['skipped']}, "
               f"queued {c['queued'] + c['sending']}")
    retry = next_retry(run)
    if retry is not None:
        click.echo(f"`newsletter scheduler` tries it again at {retry:%Y-%m-%d %H:%M} UTC "
                   f"(retry {run.auto_retries + 1} of {len(BACKOFF)})")
    elif run.status == RunStatus.PAUSED:
        click.echo(f"paused until someone resumes it: `newsletter resume {run.id}`")
    show_workers(app, ledger, run)
    for email, state, reason in ledger.problems(run.id):
        click.echo(f"{state}: {email or '(erased reader)'}: {reason}")


def show_workers(app: App, ledger: Ledger, run: Run) -> None:
    """The processes that took part in the run: what each sent, and whether it is still at work."""
    from .store import utcnow
    from .workers import is_live

    workers = ledger.workers(run.id)
    if not workers:
        return
    now = utcnow()
    live = [w for w in workers if is_live(w, app.settings.batch_lease, now)]
    click.echo(f"{plural(len(workers), 'process', 'processes')} took part, {len(live)} at work now:")
    table = Table("sender", "sent", "failed", "requests", "batches held", "last seen", "", box=None)
    for w in workers:
        state = "at work" if w in live else ("left" if w.left_at else "gone")
        table.add_row(w.owner, str(w.sent), str(w.failed), str(w.requests), str(w.batches),
                      f"{w.seen_at:%Y-%m-%d %H:%M:%S}", state)
    Console(width=160, file=sys.stdout).print(table)
