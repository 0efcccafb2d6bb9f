"""`newsletter stats` (how each issue did, readers week by week) and `newsletter admin-password`."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from .cli import App, cli, pass_app
from .cli_subscribers import shown
from .errors import IssueNotFound
from .history import EVERY_STORY, STATUSES, ReaderWeek
from .stats import COUNTS, LABELS, RATES, Figures, LinkClicks, Stats, figures_record
from .subscribers import spreadsheet_safe

FORMAT = click.Choice(["table", "csv", "json"])
NOT_TRACKED = "not tracked"
# The one-line summary of each issue: clicks (the rate to trust) before opens (approximate).
SUMMARY = ("delivered_rate", "click_rate", "open_rate", "bounce_rate", "complaint_rate")
# The figures of one issue: (count, its rate or None, what the rate is of); indented: a part.
DETAIL = (("sent", None), ("delivered", "delivered_rate"), ("clicked", "click_rate"),
          ("opened", "open_rate"), ("bounced", "bounce_rate"), ("  bounced_hard", None),
          ("  bounced_soft", None), ("complained", "complaint_rate"), ("delayed", None),
          ("failed", None), ("unsubscribed", None))
MIN_PASSWORD = 10


@cli.command()
@click.argument("target", required=False, metavar="[ISSUE|RUN]")
@click.option("--format", "fmt", type=FORMAT, default="table", show_default=True,
              help="table: aligned columns, rates in percent; csv: a header row; json: numbers, rates as fractions.")
@click.option("--readers", is_flag=True, help="Readers per status and active readers per category, week by week.")
@pass_app
def stats(app: App, target: str | None, fmt: str, readers: bool) -> None:
    """How each issue did, newest first; ISSUE (a digest's file name or path) or RUN (a run
    number) alone, with its most clicked links. Opens are approximate: trust clicks."""
    settings = app.settings
    numbers = Stats(app.subscribers.engine, base_url=settings.base_url)
    tracked = {"opens": settings.track_opens, "clicks": settings.track_clicks}
    if readers:
        if target is not None:
            raise click.UsageError("--readers counts every reader: give it no ISSUE or RUN")
        weeks = numbers.readers_by_week(settings.category_slugs)
        names = {c.slug: c.name for c in settings.categories} | {EVERY_STORY: "every story"}
        write_weeks(weeks, fmt, names)
    elif target is None:
        write_issues(numbers.issues(), fmt, tracked)
        unmatched = numbers.unmatched() if fmt == "table" else {}
        if unmatched:
            click.echo(f"and {sum(unmatched.values())} reports about emails no issue sent: "
                       + ", ".join(f"{kind} {n}" for kind, n in unmatched.items()))
    else:
        figures = numbers.run(int(target)) if target.isdigit() else find_issue(numbers, target)
        run_id = int(target) if target.isdigit() else None
        links = numbers.top_links(figures.issue, run_id=run_id) if settings.track_clicks else []
        write_issue(figures, links, fmt, tracked, run_id)


def find_issue(numbers: Stats, target: str) -> Figures:
    """An issue by its name (the digest file's name without `.md`), or a digest file's path."""
    name, stem = Path(target).name, Path(target).stem
    try:
        return numbers.issue(name)
    except IssueNotFound:
        if stem == name or not stem:
            raise
    try:
        return numbers.issue(stem)
    except IssueNotFound:
        raise IssueNotFound(f"no issue {name} was sent (see `newsletter stats`)", issue=name) from None


# -- every issue, one line each -------------------------------------------------------------------

def write_issues(issues: list[Figures], fmt: str, tracked: dict) -> None:
    records = [figures_record(f, **tracked) for f in issues]
    if fmt == "json":
        click.echo(json.dumps(records, ensure_ascii=False, indent=2))
    elif fmt == "csv":
        write_csv(records, tracked)
    elif not issues:
        click.echo("no issue has been sent yet")
    else:
        table = Table("issue", "started", "sent", *(LABELS[r] for r in SUMMARY), "unsubscribes", box=None)
        for column in table.columns[2:]:
            column.justify = "right"
        for record in records:
            table.add_row(shown(record["issue"]), record["started_at"][:10], count(record["sent"]),
                          *(rate_cell(record, r) for r in SUMMARY), count(record["unsubscribed"]))
        Console(width=200, file=sys.stdout).print(table)
        click.echo("rates: delivered, bounces and complaints of sent; clicks and opens of delivered")


def write_csv(records: list[dict], tracked: dict) -> None:
    """One row per issue; a rate with nothing to divide by is an empty cell."""
    columns = ["issue", "subject", "runs", "started_at", *COUNTS, *RATES]
    untracked = ({"opened", "open_rate"} if not tracked["opens"] else set()) | \
                ({"clicked", "click_rate"} if not tracked["clicks"] else set())
    writer = csv.DictWriter(sys.stdout, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for record in records:
        row = {k: NOT_TRACKED if k in untracked else record[k] for k in columns}
        row["runs"] = " ".join(map(str, record["runs"]))
        row["issue"], row["subject"] = spreadsheet_safe(row["issue"]), spreadsheet_safe(row["subject"])
        writer.writerow(row)


# -- one issue or run -----------------------------------------------------------------------------

def write_issue(figures: Figures, links: list[LinkClicks], fmt: str, tracked: dict, run_id: int | None) -> None:
    record = figures_record(figures, **tracked)
    if fmt == "csv":
        write_csv([record], tracked)
        return
    if fmt == "json":
        record["run"] = run_id
        record["top_links"] = [{"link": l.link, "clicks": l.clicks, "label": l.label} for l in links] \
            if tracked["clicks"] else None
        click.echo(json.dumps(record, ensure_ascii=False, indent=2))
        return
    runs = ", ".join(map(str, figures.runs))
    click.echo(f"issue:    {shown(figures.issue)} " + (f"(run {run_id} alone)" if run_id is not None else
                                                         f"(run{'s' if len(figures.runs) > 1 else ''} {runs})"))
    click.echo(f"subject:  {shown(figures.subject)}")
    click.echo(f"started:  {figures.started_at:%Y-%m-%d %H:%M} UTC")
    table = Table("", "count", "rate", "", box=None)
    table.columns[1].justify = table.columns[2].justify = "right"
    for name, rate in DETAIL:
        indent, name = name[:len(name) - len(name.lstrip())], name.strip()
        value = record[name]
        rate_text = percent(record[rate]) if rate else ""
        if value is None:
            value, rate_text = NOT_TRACKED, NOT_TRACKED if rate else ""
        of = f"of {RATES[rate][1]}" if rate and record[rate] is not None else ""
        table.add_row(indent + LABELS[name], count(value), rate_text, of)
    console = Console(width=200, file=sys.stdout)
    console.print(table)
    if not tracked["clicks"]:
        click.echo("top links: clicks are not tracked")
    elif links:
        click.echo("top links (unique clicks):")
        for link in links:
            click.echo(f"{link.clicks:>7}  {shown(link.link)}" + (f"  ({link.label})" if link.label else ""))
    else:
        click.echo("top links: no click reported yet")


# -- readers, week by week ------------------------------------------------------------------------

def write_weeks(weeks: list[ReaderWeek], fmt: str, names: dict[str, str]) -> None:
    categories = list(weeks[-1].active) if weeks else [*names]
    if fmt == "json":
        click.echo(json.dumps([{"week": w.week, "starts": w.starts.isoformat(), "statuses": w.statuses,
                                "active_by_category": {k: n for k, n in w.active.items() if k != EVERY_STORY},
                                "active_every_story": w.active.get(EVERY_STORY, 0)} for w in weeks], indent=2))
        return
    headers = ["week", "starts", *STATUSES, *(f"active_{k or 'every_story'}" for k in categories)]
    rows = [[w.week, w.starts.isoformat(), *(w.statuses.get(s, 0) for s in STATUSES),
             *(w.active.get(k, 0) for k in categories)] for w in weeks]
    if fmt == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(headers)
        writer.writerows(rows)
        return
    if not weeks:
        click.echo("no readers yet")
        return
    click.echo("readers per status at the end of each week (UTC); then active readers per category "
               "(each reader's categories as they are now)")
    table = Table("week", "starts", *STATUSES, *(shown(names.get(k, k)) for k in categories), box=None)
    for column in table.columns[2:]:
        column.justify = "right"
    for row in rows:
        table.add_row(*(count(v) if isinstance(v, int) else v for v in row))
    Console(width=250, file=sys.stdout).print(table)


def count(value) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def rate_cell(record: dict, rate: str) -> str:
    """A rate in percent; "not tracked" when its count is not (None in `figures_record`)."""
    return NOT_TRACKED if record[RATES[rate][0]] is None else percent(record[rate])


def percent(rate: float | None) -> str:
    return "–" if rate is None else f"{rate * 100:.1f}%"


# -- the stats pages' login -----------------------------------------------------------------------

@cli.command(name="admin-password")
def admin_password() -> None:
    """Make the hash of a password for the web app's /stats pages (user `admin`), to put in
    NEWSLETTER_ADMIN_PASSWORD_HASH."""
    from werkzeug.security import generate_password_hash

    password = click.prompt("Password for /stats", hide_input=True, confirmation_prompt=True)
    if len(password) < MIN_PASSWORD:
        raise click.ClickException(f"use at least {MIN_PASSWORD} characters")
    click.echo(generate_password_hash(password))
    click.echo("put it in the environment of `newsletter serve` as NEWSLETTER_ADMIN_PASSWORD_HASH "
               "(in single quotes in a shell: it holds $ signs)", err=True)
