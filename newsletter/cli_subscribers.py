"""`newsletter subscribers ...` and `newsletter db ...`: readers and their database."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from .cli import App, cli, pass_app, shown_path
from .imports import FORMATS, import_csv
from .files import atomic_writer
from .config import UNSAFE_CHARACTERS
from .store import current_revision, database_exists, head_revision, open_engine
from .subscribers import Consent, ConsentMethod, Status, Subscribers, normalize_email, write_csv

STATUS = click.Choice([s.value for s in Status])
RAW_HELP = "Write cells exactly as stored, even those a spreadsheet would run as a formula."


def split_slugs(value: str | None) -> list[str]:
    return [s.strip() for s in (value or "").split(",") if s.strip()]


def shown(text: str | None) -> str:
    """`text` safe for a terminal: control and text-direction characters as escapes (\\u202e),
    written as JSON writes them, so JSON output can go through here too."""
    if not text or text.isprintable():
        return text or ""
    return UNSAFE_CHARACTERS.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


@cli.group()
def subscribers() -> None:
    """Readers: add, list, import, export, forget."""


@subscribers.command()
@click.argument("email")
@click.option("--name", help="The reader's name.")
@click.option("--categories", metavar="a,b", help="Categories of interest (slugs).")
@pass_app
def add(app: App, email: str, name: str | None, categories: str | None) -> None:
    """Add EMAIL as an active reader (consent recorded as given through the CLI)."""
    store = app.open_subscribers(create=True)  # the first reader may start the list
    reader = store.add(email, name=name, categories=split_slugs(categories),
                       consent=Consent(ConsentMethod.CLI))
    click.echo(f"added {reader.email} ({reader.status.value}; "
               f"{', '.join(reader.categories) or 'no categories: gets every story'})")


@subscribers.command()
@click.argument("email")
@pass_app
def remove(app: App, email: str) -> None:
    """Unsubscribe EMAIL. The reader is kept (as unsubscribed) so no import brings them back.
    A reader who already left is left as they are (exit status 0: they get no email either way)."""
    reader, changed = app.subscribers.unsubscribe(email, reason="removed with the CLI")
    if reader is None:
        click.echo(f"{normalize_email(email)} was forgotten at the reader's request: nothing to remove")
    elif not changed:
        click.echo(f"{reader.email} had already left ({reader.status.value} since "
                   f"{reader.status_changed_at:%Y-%m-%d}): nothing changed")
    else:
        click.echo(f"unsubscribed {reader.email}")


@subscribers.command()
@click.argument("email")
@click.option("--token", is_flag=True, help="Also show the secret token of the reader's links.")
@pass_app
def show(app: App, email: str, token: bool) -> None:
    """Show everything stored about EMAIL."""
    reader = app.subscribers.require(email)
    for key, value in reader.as_row().items():
        click.echo(f"{key + ':':<17}{shown(value)}")
    if token:
        click.echo(f"{'token:':<17}{reader.token}")


@subscribers.command(name="list")
@click.option("--status", type=STATUS, help="Only readers with this status.")
@click.option("--category", help="Only readers of this category (slug).")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table",
              show_default=True)
@click.option("--raw", is_flag=True, help=f"With --format csv: {RAW_HELP[0].lower()}{RAW_HELP[1:]}")
@pass_app
def list_(app: App, status: str | None, category: str | None, fmt: str, raw: bool) -> None:
    """List readers, streaming: works the same for ten readers or a million."""
    rows = app.subscribers.iter_readers(Status(status) if status else None, category)
    out = sys.stdout
    if fmt == "csv":
        write_csv(out, rows, raw=raw)
    elif fmt == "json":
        out.write("[")
        for n, reader in enumerate(rows):
            out.write(("," if n else "") + "\n  " + shown(json.dumps(reader.as_row(), ensure_ascii=False)))
        out.write("\n]\n")
    else:
        out.write(f"{'EMAIL':<40} {'NAME':<24} {'STATUS':<13} CATEGORIES\n")
        for reader in rows:
            out.write(f"{shown(reader.email):<40} {shown(reader.name)[:24]:<24} {reader.status.value:<13} "
                      f"{','.join(reader.categories)}\n")


@subscribers.command()
@pass_app
def count(app: App) -> None:
    """Count readers per status, and active readers per category."""
    by_status, by_category = app.subscribers.counts()
    table = Table("status", "readers", box=None)
    for status, n in by_status.items():
        table.add_row(status, str(n))
    table.add_row("total", str(sum(by_status.values())), style="bold")
    categories = Table("category", "active readers", box=None)
    for slug, n in by_category.items():
        categories.add_row(f"{app.settings.category(slug).name} ({slug})", str(n))
    categories.add_row("no categories (every story)", str(app.subscribers.active_without_categories()))
    console = Console()
    console.print(table)
    console.print()
    console.print(categories)


@subscribers.command(name="set-categories")
@click.argument("email")
@click.argument("categories")
@pass_app
def set_categories(app: App, email: str, categories: str) -> None:
    """Set the categories of EMAIL to CATEGORIES (a,b; an empty string: every story)."""
    reader = app.subscribers.set_categories(email, split_slugs(categories))
    click.echo(f"{reader.email}: {', '.join(reader.categories) or 'no categories: gets every story'}")


@subscribers.command(name="rotate-token")
@click.argument("email")
@pass_app
def rotate_token(app: App, email: str) -> None:
    """Give EMAIL a new secret token: links in emails already sent stop working."""
    reader = app.subscribers.rotate_token(email)
    click.echo(f"new token for {reader.email}")


@subscribers.command()
@click.argument("email")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_app
def forget(app: App, email: str, yes: bool) -> None:
    """Erase EMAIL and its data (GDPR); a one-way hash keeps it from being added again."""
    reader = app.subscribers.require(email)
    if not yes:
        click.confirm(f"Erase {reader.email} and everything stored about them?", abort=True)
    app.subscribers.forget(reader.email)
    click.echo(f"forgot {reader.email}")


@subscribers.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--status", type=STATUS, help="Only readers with this status.")
@click.option("--category", help="Only readers of this category (slug).")
@click.option("--raw", is_flag=True, help=RAW_HELP)
@pass_app
def export(app: App, file: Path, status: str | None, category: str | None, raw: bool) -> None:
    """Export readers to FILE as CSV (written whole or not at all), safe to open in a spreadsheet."""
    with atomic_writer(file) as out:
        n = app.subscribers.export_csv(out, Status(status) if status else None, category, raw=raw)
    click.echo(f"exported {n} readers to {shown_path(file)}")


@subscribers.command(name="import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["auto", *FORMATS]), default="auto", show_default=True,
              help="The file's origin; auto recognizes it from the header.")
@click.option("--email-column", help="The column holding the address (any CSV).")
@click.option("--map-tag", "map_tags", multiple=True, metavar="'TAG=slug'",
              help="Map a tag, group or interest of the file to a category; repeatable.")
@click.option("--categories", metavar="a,b", help="Add these categories to every imported reader.")
@click.option("--dry-run", is_flag=True, help="Show what would change, change nothing.")
@pass_app
def import_(app: App, file: Path, fmt: str, email_column: str | None, map_tags: tuple[str, ...],
            categories: str | None, dry_run: bool) -> None:
    """Import readers from FILE: Mailchimp, Substack, Buttondown exports or any CSV with emails."""
    mapping = {}
    for item in map_tags:
        tag, sep, slug = item.rpartition("=")
        if not sep or not tag.strip():
            raise click.BadParameter(f"{item!r} is not TAG=slug", param_hint="'--map-tag'")
        mapping[tag.strip()] = slug.strip()
    with Progress(TextColumn("importing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True), transient=True, disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task("import", total=None)
        if dry_run and not database_exists(app.settings.database_url):
            # Nothing to compare with, and a dry run must not create the database: an empty one in memory.
            store = Subscribers.open("sqlite://", app.settings.categories)
        else:
            store = app.open_subscribers(create=True)
        summary = import_csv(store, file, fmt=None if fmt == "auto" else fmt,
                             email_column=email_column, map_tags=mapping,
                             categories=split_slugs(categories), dry_run=dry_run,
                             progress=lambda done, total: bar.update(task, completed=done, total=total))
    for line in summary.report_lines():
        click.echo(line)


class Age(click.ParamType):
    """A duration written `7d` (days) or `12h` (hours)."""

    name = "age"

    def convert(self, value, param, ctx):
        import datetime as dt
        import re

        if isinstance(value, dt.timedelta):
            return value
        match = re.fullmatch(r"\s*(\d{1,5})\s*([dh])\s*", str(value).lower())
        if match is None or int(match.group(1)) == 0:
            self.fail(f"{value!r} is not an age like 7d or 12h (at least 1h)", param, ctx)
        unit = "days" if match.group(2) == "d" else "hours"
        return dt.timedelta(**{unit: int(match.group(1))})


def _signups(app: App):
    from .config import load_secret_key
    from .signups import Signups

    return Signups(app.subscribers, app.settings, load_secret_key(app.settings))


@subscribers.command(name="prune-pending")
@click.option("--older-than", "older_than", type=Age(), default="7d", show_default=True,
              help="Remove readers whose every signup is older than this (7d, 48h, ...).")
@pass_app
def prune_pending(app: App, older_than) -> None:
    """Remove pending readers who signed up with the form and never confirmed, with their signups.

    Only readers who are pending and whose every signup is older than --older-than: readers of
    any other status, and pending readers who never used the form (imported, added), stay."""
    removed = _signups(app).prune_pending(older_than)
    click.echo(f"removed {removed} pending reader{'' if removed == 1 else 's'} who never confirmed")


@subscribers.command()
@click.argument("email")
@pass_app
def resubscribe(app: App, email: str) -> None:
    """Send EMAIL the confirmation email, for a reader who asked to come back.

    They become active only by clicking its link (their new consent); an active reader is refused."""
    from .errors import ProviderError, SubscriberError
    from .signups import Outcome, where_confirmations_go

    result = _signups(app).resubscribe(email)
    address = app.subscribers.require(email).email
    if result.outcome == Outcome.LIMITED:
        raise SubscriberError(f"{address} was already sent {app.settings.confirmations_per_day} "
                              "confirmation emails today (confirmations_per_day); try again tomorrow")
    if result.outcome != Outcome.SENT:
        raise ProviderError(f"the confirmation email to {address} was not sent: {result.error}")
    folder = where_confirmations_go(app.settings)
    where = f" (written to {shown_path(Path(folder))})" if folder else ""
    click.echo(f"sent a confirmation email to {address}; its link works for "
               f"{app.settings.confirm_hours} hours{where}")


@cli.group()
def db() -> None:
    """The subscriber database."""


@db.command(name="upgrade")
@pass_app
def db_upgrade(app: App) -> None:
    """Create the database if there is none and apply the schema migrations (also done
    automatically on first use); safe to run from several processes at once."""
    engine = open_engine(app.settings.database_url)
    click.echo(f"database at revision {current_revision(engine)} (newest: {head_revision()})")
    engine.dispose()
