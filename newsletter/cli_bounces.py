"""`newsletter bounces fetch`: bounces and complaints about mail sent over SMTP, from the bounce mailbox."""

from __future__ import annotations

import click

from .cli import App, cli, pass_app
from .mailbox import check_configured, fetch_reports


@cli.group()
def bounces() -> None:
    """Bounce and complaint reports that arrive by email (for mail sent over SMTP)."""


@bounces.command()
@pass_app
def fetch(app: App) -> None:
    """Read the bounce mailbox once: store each report, stop readers who bounced for good or
    complained, and move every message read to the done folder."""
    check_configured(app.settings)  # before the database: say what to set first
    click.echo(str(fetch_reports(app.settings, app.subscribers.engine)))
