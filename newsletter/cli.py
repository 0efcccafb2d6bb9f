"""The `newsletter` command: a thin shell over the library. Errors become one line, never a traceback."""

from __future__ import annotations

import importlib
import os
import sys
import traceback
import webbrowser
from functools import cached_property
from pathlib import Path

import click

from . import preview as preview_mod
from .config import Settings, load_settings
from .digest import load_digest
from .errors import DigestError, ExitCode, NewsletterError
from .render import Renderer, empty_tldr, select, size_warnings
from .send import categories_of, describe_variant, possible_variants, prepare
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
        "admin-password": "cli_stats", "bounces": "cli_bounces", "db": "cli_subscribers", "pause": "cli_worker", 
        "resume": "cli_send", "runs": "cli_send", "schedule": "cli_schedule", "scheduler": "cli_schedule",
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


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@pass_app
def check(app: App, files: tuple[str, ...]) -> None:
    """Run the pre-send checks on digest FILES: errors and warnings with file and line.

    Every variant a reader could get is rendered and its message built, as `send` does: a digest
    that passes here will send."""
    renderer = None
    failed = 0
    for file in files:
        try:
            digest = load_digest(file, app.settings)
        except DigestError as e:
            failed += 1
            for problem in e.problems:
                click.secho(f"error: {problem}", fg="red", err=True)
            continue
        for problem in digest.warnings:
            echo_warning(str(problem))
        renderer = renderer or Renderer(app.settings)
        try:
            variants = prepare(renderer, digest, app.settings, possible_variants(digest))
        except NewsletterError as e:
            failed += 1
            click.secho(f"error: {e}", fg="red", err=True)
            continue
        for key, variant in variants.items():
            for warning in size_warnings(variant.size):
                echo_warning(f"{file}: variant {key}: {warning}")
            if categories_of(key) is not None and empty_tldr(select(digest, categories_of(key))):
                echo_warning(f"{file}:{digest.tldr_line}: the TL;DR box is empty for readers of "
                             f"{describe_variant(app.settings, key)}: every 'tldr' line is about stories "
                             "they do not get (a line with 'text:' and 'categories:' can be theirs)")
        stories = [s for s in digest.stories if s.kind == "story"]
        roundups = sum(len(s.entries) for s in digest.stories if s.kind == "roundups")
        click.echo(f"ok: {file}: {plural(len(stories), 'story', 'stories')}, "
                   f"{plural(roundups, 'round-up')}, {plural(len(digest.footnotes), 'note')}, "
                   f"{plural(len(variants), 'variant')} rendered")
    if failed:
        raise SystemExit(ExitCode.ERROR)


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--out", "out", type=click.Path(dir_okay=False), help="Where to write (default: in output_dir).")
@click.option("--text", is_flag=True, help="Write the plain-text part instead of the HTML.")
@click.option("--categories", metavar="a,b", help="Render the variant a reader of these categories gets.")
@click.option("--open", "open_", is_flag=True, help="Open the result in the browser.")
@click.option("--serve", is_flag=True, help="Serve a live preview on 127.0.0.1 that reloads on change.")
@click.option("--port", default=8025, show_default=True, type=click.IntRange(0, 65535),
              help="Port for --serve (0: any free port).")
@pass_app
def preview(app: App, file: str, out: str | None, text: bool, categories: str | None, open_: bool,
            serve: bool, port: int) -> None:
    """Render digest FILE to an HTML (or text) file and report its size and warnings."""
    settings = app.settings
    wanted = parse_categories(settings, categories)
    if serve:
        preview_mod.serve(settings, Path(file), wanted, port=port, open_browser=open_)
        return
    result = preview_mod.write_preview(settings, Path(file), wanted, out=Path(out) if out else None,
                                       text=text)
    for warning in result.warnings:
        echo_warning(warning)
    click.echo(f"wrote {shown_path(result.path)} ({result.size / 1024:.1f} KB, "
               f"{plural(result.stories, 'story', 'stories')}, {plural(result.notes, 'note')}, "
               f"variant {result.variant})")
    if open_:
        webbrowser.open(result.path.resolve().as_uri())


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

