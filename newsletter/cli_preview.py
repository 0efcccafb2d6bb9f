"""`newsletter check` and `newsletter preview`: a digest rendered, before anyone gets it."""

from __future__ import annotations

import webbrowser
from pathlib import Path

import click

from . import preview as preview_mod
from .cli import App, cli, echo_warning, parse_categories, pass_app, plural, shown_path
from .digest import load_digest
from .errors import DigestError, ExitCode, NewsletterError
from .render import Renderer, empty_tldr, select, size_warnings
from .send import categories_of, describe_variant, possible_variants, prepare


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
