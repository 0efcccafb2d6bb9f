"""The `newsletter` command: a thin shell over the library. Errors become one line, never a traceback."""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from functools import cached_property
from pathlib import Path

import click

from .config import Settings, load_settings
from .errors import ExitCode, NewsletterError
from .subscribers import Subscribers

_debug = False


class App:
    """What every command needs: settings, loaded on first use so `--help` works anywhere."""

    def __init__(self, config: str | None):
        self.config = config
        self._subscribers: Subscribers | None = None

    @cached_property
    def settings(self) -> Settings:
        return load_settings(self.config)

    @property
    def subscribers(self) -> Subscribers:
        """The readers, for commands that read or send to them: a missing database is an error
        naming the file, never a new empty list."""
        return self.open_subscribers(create=False)

    def open_subscribers(self, *, create: bool) -> Subscribers:
        """The readers, opened once per command. `create`, for the commands that may add the first
        ones: a missing SQLite database is created."""
        if self._subscribers is None:
            self._subscribers = Subscribers.from_settings(self.settings, create=create)
        return self._subscribers


pass_app = click.make_pass_decorator(App)


def echo_warning(message: str) -> None:
    click.secho(f"warning: {message}", fg="yellow", err=True)


def plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


def shown_path(path: Path) -> str:
    """A path as the user would type it: relative to the working directory when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def parse_categories(settings: Settings, value: str | None) -> list[str] | None:
    """`--categories`: slugs or display names (any case), comma-separated; None when not given."""
    if value is None:
        return None
    by_name = {}
    for category in settings.categories:
        by_name.setdefault(category.slug.casefold(), category.slug)
        by_name.setdefault(" ".join(category.name.split()).casefold(), category.slug)
    whole = " ".join(value.split()).casefold()
    parts = [whole] if whole in by_name else [" ".join(p.split()).casefold() for p in value.split(",")]
    parts = [p for p in parts if p]
    if not parts:
        raise click.BadParameter("names no category; leave it out to preview every story (what a reader "
                                 "with no categories gets)", param_hint="'--categories'")
    unknown = [p for p in parts if p not in by_name]
    if unknown:
        known = ", ".join(f"{c.slug} ({c.name})" for c in settings.categories)
        raise click.BadParameter(f"unknown category '{unknown[0]}' (known: {known})",
                                 param_hint="'--categories'")
    return list(dict.fromkeys(by_name[p] for p in parts))


class Commands(click.Group):
    """The top-level group. A command's module is imported when the command is looked up, so
    `newsletter send` (or a worker) does not load the web app, the scheduler or the importer:
    a process holds only what its job needs, in memory and in start-up time."""

    MODULES = {  # command -> the module that defines it (tests/test_cli.py holds this to the modules)
        "admin-password": "cli_stats", "bounces": "cli_bounces", "check": "cli_preview", "db": "cli_subscribers",
        "pause": "cli_worker", "preview": "cli_preview", "resume": "cli_send", "runs": "cli_send", "schedule": "cli_schedule", "scheduler": "cli_schedule",
        "send": "cli_send", "send-due": "cli_schedule", "serve": "cli_web", "stats": "cli_stats",
        "subscribers": "cli_subscribers", "webhooks": "cli_webhooks", "worker": "cli_worker",
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self.MODULES})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.commands and name in self.MODULES:
            importlib.import_module(f"{__package__}.{self.MODULES[name]}")  # its decorators register it
        return self.commands.get(name)


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config", type=click.Path(dir_okay=False), envvar="NEWSLETTER_CONFIG",
              help="Settings file (default: ./newsletter.toml).")
@click.option("--debug", is_flag=True, help="Show a traceback when something fails.")
@click.version_option(package_name="newsletter")
@click.pass_context
def cli(ctx: click.Context, config: str | None, debug: bool) -> None:
    """Send a Markdown digest kept in git as a responsive email."""
    global _debug
    _debug = debug
    ctx.obj = App(config)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI and turn every failure into one line and an exit code."""
    try:
        rv = cli.main(args=argv, prog_name="newsletter", standalone_mode=False)
        return int(rv) if isinstance(rv, int) else ExitCode.OK
    except NewsletterError as e:
        if _debug:
            traceback.print_exc()
        click.secho(f"error: {e}", fg="red", err=True)
        return e.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return ExitCode.ERROR
    except click.exceptions.NoArgsIsHelpError as e:
        click.echo(e.ctx.get_help() if e.ctx else e.format_message())
        return ExitCode.OK
    except click.ClickException as e:
        click.secho(f"error: {e.format_message()}", fg="red", err=True)
        return e.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return ExitCode.INTERRUPTED
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else ExitCode.ERROR
    except OSError as e:  # a file or folder we could not read or write
        if _debug:
            traceback.print_exc()
        where = f"{e.filename}: " if e.filename else ""
        click.secho(f"error: {where}{e.strerror or _first_line(e)}", fg="red", err=True)
        return ExitCode.ERROR
    except Exception as e:  # a bug: still one line, unless asked for more
        if _debug or os.environ.get("NEWSLETTER_DEBUG"):
            traceback.print_exc()
        click.secho(f"error: unexpected {type(e).__name__}: {_first_line(e)} (run with --debug for details)",
                    fg="red", err=True)
        return ExitCode.INTERNAL


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def run() -> None:
    sys.exit(main())

