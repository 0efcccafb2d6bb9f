"""`newsletter worker` and `newsletter pause`: sending shared by many processes (PostgreSQL)."""

from __future__ import annotations

import logging
import signal
import sys
import threading

import click

from .cli import App, cli, pass_app
from .errors import SendError
from .ledger import Ledger, RunStatus
from .send import PAUSED_BY_USER


@cli.command()
@click.option("--exit-when-idle", is_flag=True,
              help="Exit once no run has work left (after finishing batches of workers that died).")
@pass_app
def worker(app: App, exit_when_idle: bool) -> None:
    """Take part in sending every run being sent, batch by batch, beside any number of other
    workers on the same PostgreSQL database; SIGTERM or Ctrl-C stops after the batch in flight."""
    from .workers import Worker, check_shared

    settings, engine = app.settings, app.subscribers.engine
    check_shared(engine)  # before anything else: SQLite is refused in one line
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    taking_part = Worker(settings, engine, stop=stop, exit_when_idle=exit_when_idle)
    click.echo(f"worker {taking_part.ledger.owner} running for {settings.name} via "
               f"{taking_part.provider.name} (stop with Ctrl-C or SIGTERM)", err=True)
    try:
        taking_part.run()
    finally:
        taking_part.close()
    click.echo(f"worker {taking_part.ledger.owner} stopped", err=True)


@cli.command()
@click.argument("run_id", type=int)
@pass_app
def pause(app: App, run_id: int) -> None:
    """Pause send run RUN_ID: every process sending it stops after its batch in flight."""
    ledger = Ledger(app.subscribers.engine)
    run = ledger.run(run_id)
    if not ledger.pause(run.id, PAUSED_BY_USER):
        status = ledger.run(run.id).status
        raise SendError(f"run {run.id} is {status.value}, not being sent; there is nothing to pause"
                        + (f" (resume it with `newsletter resume {run.id}`)" if status == RunStatus.PAUSED else ""),
                        run_id=run.id)
    click.echo(f"run {run.id} paused: every process sending it stops after its batch in flight; "
               f"`newsletter resume {run.id}` goes on")
