import re
import signal
import subprocess
import sys
import urllib.request

import click
import pytest

from newsletter.cli import cli

from .conftest import EXAMPLE, ROOT
from .test_digest import GOOD


def test_every_command_has_help(run):
    with click.Context(cli) as ctx:
        commands = {name: cli.get_command(ctx, name) for name in cli.list_commands(ctx)}
    assert {"check", "preview", "send", "serve", "worker"} <= set(commands)
    for name, command in commands.items():
        assert command.help and len(command.help.strip()) > 20, name
        result = run(name, "--help")
        assert result.code == 0 and "Usage: newsletter" in result.out


def test_each_command_is_found_in_its_module():
    """The top-level group imports a command's module when it is asked for: the map it goes by
    must name every command where it is defined."""
    import importlib

    for module in set(cli.MODULES.values()):
        importlib.import_module(f"newsletter.{module}")
    defined = {name: command.callback.__module__ for name, command in cli.commands.items()
               if command.callback.__module__ != "newsletter.cli"}
    assert defined == {name: f"newsletter.{module}" for name, module in cli.MODULES.items()}


def test_a_send_loads_neither_the_web_app_nor_the_scheduler():
    code = ("import sys\nfrom newsletter.cli import main\nmain(['send', '--help'])\n"
            "print(sorted(m for m in ('flask', 'apscheduler', 'werkzeug') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.splitlines()[-1] == "[]" and "Usage: newsletter send" in out.stdout


def test_preview_writes_html_and_reports(run, tmp_path):
    out = tmp_path / "email.html"
    result = run("preview", EXAMPLE, "--out", out)
    assert result.code == 0, result.err
    assert f"wrote {out} (" in result.out and "18 notes" in result.out and "KB" in result.out
    page = out.read_text()
    assert page.startswith("<!doctype html>")
    assert "https://newsletter.example.com/u/preview" in page and "%%" not in page


def test_preview_text_and_variant(run, tmp_path):
    out = tmp_path / "tech.txt"
    result = run("preview", EXAMPLE, "--text", "--categories", "ai-tech", "--out", out)
    assert result.code == 0, result.err
    assert "variant ai-tech" in result.out
    text = out.read_text()
    assert "RCLA PROMISES" in text and "LEMMA-7B LEARNS" not in text


def test_preview_default_path_is_in_output_dir(run, tmp_path, monkeypatch):
    monkeypatch.setenv("NEWSLETTER_OUTPUT_DIR", str(tmp_path / "previews"))
    result = run("preview", EXAMPLE, "--categories", "essays,ai-news")
    assert result.code == 0, result.err
    assert (tmp_path / "previews" / f"{EXAMPLE.stem}.ai-news+essays.html").exists()


def test_preview_warns_about_size(run, tmp_path):
    story = "## Story {n}\n\n" + ("A long paragraph of words that goes on. " * 60 + "\n\n") * 6
    digest = tmp_path / "long.md"
    digest.write_text(GOOD.lstrip().split("## First story")[0] +
                      "".join(story.format(n=n) for n in range(12)) + GOOD.split("One paragraph.[^b]")[1])
    result = run("preview", digest, "--out", tmp_path / "long.html")
    assert result.code == 0, result.err
    assert "warning:" in result.err and "Gmail clips" in result.err


@pytest.mark.parametrize("args, message", [
    (["preview", "nope.md"], "error: nope.md: file not found"),
    (["preview", EXAMPLE, "--categories", "sports"], "error: Invalid value for '--categories': "
     "unknown category 'sports'"),
    (["preview", EXAMPLE, "--categories", ""], "error: Invalid value for '--categories': names no category; "
     "leave it out to preview every story"),
    (["preview", EXAMPLE, "--categories", " , "], "error: Invalid value for '--categories': names no category"),
    (["--config", "missing.toml", "preview", EXAMPLE], "error: missing.toml: config file not found"),
])
def test_errors_are_one_line(run, tmp_path, args, message):
    out = tmp_path / "x.html"
    result = run(*args, "--out", out)
    assert result.code != 0
    assert result.err.strip().startswith(message), result.err
    assert len(result.err.strip().splitlines()) == 1 and "Traceback" not in result.err
    assert not out.exists()


@pytest.mark.parametrize("broken, message", [
    (lambda t: t.replace("title: A small issue\n", ""), ":1: front matter has no 'title'"),
    (lambda t: t.replace("Body text citing a note.[^b]", "Body.[^7]"), ":19: footnote [^7] is never defined"),
    (lambda t: t.replace("Intro paragraph.", "TK"), ":11: leftover placeholder 'TK'"),
    (lambda t: t.replace("author: Ana", "author: [Ana"), ":6: invalid front matter"),
    (lambda t: t.replace("<!-- categories: ai-tech -->", "<!-- categories: sport -->"),
     ":14: unknown category 'sport'"),
    (lambda t: t.replace("## Round-ups", "## Nothing here\n\n## Round-ups"), ":25: story 'Nothing here' is empty"),
    (lambda t: t.replace("---\n", "", 1), ":1: no front matter"),
    (lambda t: t.replace("One paragraph.", "One paragraph. TODO"), ":30: leftover placeholder 'TODO'"),
    (lambda t: t.replace("categories: [ai-research]", "categories: [gardening]"), ":6: unknown category"),
])
def test_broken_digest_writes_nothing(run, tmp_path, broken, message):
    digest = tmp_path / "broken.md"
    digest.write_text(broken(GOOD.lstrip()))
    out_dir = tmp_path / "out"
    for args in (["preview", digest, "--out", out_dir / "x.html"], ["preview", digest, "--text", "--out",
                                                                     out_dir / "x.txt"]):
        result = run(*args)
        assert result.code == 1
        assert result.err.startswith(f"error: {digest}{message}"), result.err
        assert "Traceback" not in result.err
        assert not out_dir.exists() or list(out_dir.iterdir()) == []
    result = run("check", digest)
    assert result.code == 1 and f"{digest}{message}" in result.err


def test_check_reports_warnings_and_passes(run, tmp_path):
    digest = tmp_path / "warn.md"
    digest.write_text(GOOD.lstrip() + "\n[^c]: [Unused](https://c.example.org)\n")
    result = run("check", digest)
    assert result.code == 0
    assert f"warning: {digest}:37: footnote [^c] is defined but never cited" in result.err
    assert result.out.startswith(f"ok: {digest}: 1 story, 1 round-up, 2 notes")


def test_unexpected_errors_are_one_line_too(run, monkeypatch):
    import newsletter.preview as preview

    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire")
    monkeypatch.setattr(preview, "write_preview", boom)
    result = run("preview", EXAMPLE)
    assert result.code == 3
    assert result.err.strip() == "error: unexpected RuntimeError: disk on fire (run with --debug for details)"
    result = run("--debug", "preview", EXAMPLE)
    assert "Traceback" in result.err


def test_no_command_shows_help(run):
    result = run()
    assert result.code == 0 and "Commands:" in result.out


def test_preview_open_opens_the_written_file(run, tmp_path, monkeypatch):
    opened = []
    monkeypatch.setattr("webbrowser.open", opened.append)
    out = tmp_path / "o.html"
    result = run("preview", EXAMPLE, "--out", out, "--open")
    assert result.code == 0
    assert opened == [out.resolve().as_uri()]


def test_preview_serve_from_the_command_line(tmp_path):
    """`newsletter preview --serve` as a user runs it: a process serving on 127.0.0.1."""
    process = subprocess.Popen([sys.executable, "-m", "newsletter", "preview", str(EXAMPLE), "--serve",
                                "--port", "0", "--categories", "ai-tech"], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        url = re.search(r"at (http://127\.0\.0\.1:\d+/)", line).group(1)
        with urllib.request.urlopen(url + "email.html", timeout=10) as response:
            page = response.read().decode()
        assert "RCLA promises a sixfold" in page and "Lemma-7B learns when" not in page
        with urllib.request.urlopen(url, timeout=10) as response:
            assert "variant: ai-tech" in response.read().decode()
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=10)
    assert process.returncode == 0
    assert "Traceback" not in process.stderr.read()


# -- the database: where it is, and which commands create it ---------------------------------------

def test_the_database_is_beside_the_settings_file(run, monkeypatch, tmp_path):
    site, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    site.mkdir()
    elsewhere.mkdir()
    settings = (ROOT / "newsletter.toml").read_text()
    (site / "newsletter.toml").write_text(settings)  # database_url not set: the default
    monkeypatch.chdir(elsewhere)
    assert run("--config", site / "newsletter.toml", "subscribers", "add", "a@example.com").code == 0
    assert (site / "subscribers.db").exists()
    (site / "newsletter.toml").write_text(f'database_url = "sqlite:///data/readers.db?timeout=20"\n{settings}')
    (site / "data").mkdir()
    assert run("--config", site / "newsletter.toml", "subscribers", "add", "b@example.com").code == 0
    assert (site / "data" / "readers.db").exists()
    assert list(elsewhere.iterdir()) == []
    monkeypatch.chdir(site / "data")  # the same list, from any folder
    listed = run("--config", "../newsletter.toml", "subscribers", "list").out
    assert "b@example.com" in listed and "a@example.com" not in listed


NEED_READERS = [
    ["send", EXAMPLE, "--yes"], ["send", EXAMPLE, "--dry-run"], ["send", EXAMPLE, "--test", "me@example.com"],
    ["resume", "1", "--yes"], ["runs"], ["runs", "1"], ["runs", "cancel", "1", "--yes"],
    ["subscribers", "list"], ["subscribers", "count"], ["subscribers", "show", "a@example.com"],
    ["subscribers", "export", "{tmp}/readers.csv"], ["subscribers", "remove", "a@example.com"],
    ["subscribers", "set-categories", "a@example.com", "ai-tech"],
    ["subscribers", "rotate-token", "a@example.com"], ["subscribers", "forget", "a@example.com", "--yes"],
]


@pytest.mark.parametrize("args", NEED_READERS, ids=lambda args: " ".join(map(str, args[:2])))
def test_commands_that_need_readers_never_create_the_database(run, monkeypatch, tmp_path, args):
    db = tmp_path / "subscribers.db"
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", f"sqlite:///{db}")
    monkeypatch.setenv("NEWSLETTER_OUTBOX_DIR", str(tmp_path / "outbox"))
    result = run(*[str(a).format(tmp=tmp_path) for a in args])
    assert result.code == 1
    assert result.err == (f"error: database file {db} does not exist (run `newsletter db upgrade` to "
                          "create it, or check database_url)\n")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, out", [
    (["subscribers", "add", "a@example.com"], "added a@example.com"),
    (["subscribers", "import", ROOT / "digests" / "demo-readers.csv"], "added 5"),
    (["db", "upgrade"], "database at revision"),
])
def test_commands_that_start_a_list_create_the_database(run, monkeypatch, tmp_path, args, out):
    db = tmp_path / "subscribers.db"
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", f"sqlite:///{db}")
    result = run(*args)
    assert result.code == 0, result.err
    assert out in result.out and db.exists()
    assert run("subscribers", "count").code == 0  # and now the others find it


@pytest.mark.parametrize("given", ["AI Tech, essays", "ai tech,Essays", "ai-tech,ESSAYS", "essays, AI  Tech"])
def test_preview_categories_take_display_names_as_well_as_slugs(run, tmp_path, given):
    out = tmp_path / "x.html"
    result = run("preview", EXAMPLE, "--categories", given, "--out", out)
    assert result.code == 0, result.err
    expected = tmp_path / "by-slug.html"
    assert run("preview", EXAMPLE, "--categories", "ai-tech,essays", "--out", expected).code == 0
    assert out.read_text(encoding="utf-8") == expected.read_text(encoding="utf-8")
