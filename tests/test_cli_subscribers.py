import csv
import io
import json

import pytest

from .test_imports import DATA


@pytest.fixture
def cli(run, monkeypatch, db_url):
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", db_url)
    return run


def test_add_show_list_count(cli):
    result = cli("subscribers", "add", "Ana@Example.COM", "--name", "Ana", "--categories", "ai-tech,essays")
    assert result.code == 0, result.err
    assert result.out.strip() == "added ana@example.com (active; ai-tech, essays)"
    cli("subscribers", "add", "bo@example.com")
    shown = cli("subscribers", "show", "ANA@example.com").out
    assert "status:          active" in shown and "consent_method:  cli" in shown
    assert "token" not in shown
    assert "token:" in cli("subscribers", "show", "ana@example.com", "--token").out

    table = cli("subscribers", "list").out.splitlines()
    assert table[0].split() == ["EMAIL", "NAME", "STATUS", "CATEGORIES"]
    assert [line.split()[0] for line in table[1:]] == ["ana@example.com", "bo@example.com"]
    rows = list(csv.DictReader(io.StringIO(cli("subscribers", "list", "--format", "csv").out)))
    assert [r["email"] for r in rows] == ["ana@example.com", "bo@example.com"]
    assert rows[0]["categories"] == "ai-tech,essays"
    data = json.loads(cli("subscribers", "list", "--format", "json", "--category", "essays").out)
    assert [r["email"] for r in data] == ["ana@example.com"]

    counted = cli("subscribers", "count").out
    assert "active" in counted and "AI Tech (ai-tech)" in counted
    assert [line.split()[-1] for line in counted.splitlines() if line.strip().startswith("total")] == ["2"]


def test_rotate_token(cli):
    cli("subscribers", "add", "ana@example.com")
    before = cli("subscribers", "show", "ana@example.com", "--token").out
    assert cli("subscribers", "rotate-token", "ana@example.com").out.strip() == "new token for ana@example.com"
    after = cli("subscribers", "show", "ana@example.com", "--token").out
    token = [line.split()[1] for line in after.splitlines() if line.startswith("token:")][0]
    assert token not in before and len(token) >= 32


def test_remove_set_categories_forget(cli):
    cli("subscribers", "add", "ana@example.com")
    assert cli("subscribers", "set-categories", "ana@example.com", "ai-news").out.strip() == \
        "ana@example.com: ai-news"
    assert cli("subscribers", "remove", "ana@example.com").out.strip() == "unsubscribed ana@example.com"
    assert "status:          unsubscribed" in cli("subscribers", "show", "ana@example.com").out
    assert cli("subscribers", "list", "--status", "active").out.splitlines()[1:] == []
    result = cli("subscribers", "forget", "ana@example.com", "--yes")
    assert result.out.strip() == "forgot ana@example.com"
    result = cli("subscribers", "add", "ana@example.com")
    assert result.code == 1
    assert result.err.strip() == ("error: ana@example.com was forgotten at the reader's request and "
                                  "cannot be added again")


@pytest.mark.parametrize("args, message", [
    (["subscribers", "add", "not-an-email"], "error: invalid email address 'not-an-email'"),
    (["subscribers", "add", "a@example.com", "--categories", "sports"], "error: unknown category 'sports'"),
    (["subscribers", "show", "nobody@example.com"], "error: no reader with address nobody@example.com"),
    (["subscribers", "import", "missing.csv"], "error: missing.csv: cannot read"),
    (["subscribers", "import", str(DATA / "generic.csv"), "--map-tag", "oops"], "error: Invalid value for "
     "'--map-tag': 'oops' is not TAG=slug"),
    (["subscribers", "list", "--category", "sports"], "error: unknown category 'sports'"),
])
def test_errors_are_one_line(cli, args, message):
    result = cli(*args)
    assert result.code != 0
    assert result.err.startswith(message), result.err
    assert len(result.err.strip().splitlines()) == 1


def test_import_export_round_trip(cli, tmp_path):
    result = cli("subscribers", "import", DATA / "mailchimp_subscribed.csv", "--map-tag", "Book Club=essays")
    assert result.code == 0, result.err
    assert "added 8 (8 active), updated 0, unchanged 0, skipped 1, invalid 2" in result.out
    assert "invalid: line 6: invalid email address 'not-an-email'" in result.out
    dry = cli("subscribers", "import", DATA / "mailchimp_subscribed.csv", "--dry-run")
    assert "would add 0" in dry.out and "dry run: nothing was changed" in dry.out
    out = tmp_path / "readers.csv"
    assert cli("subscribers", "export", out).out.strip() == f"exported 8 readers to {out}"
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 8 and {r["consent_method"] for r in rows} == {"import"}


def test_db_upgrade(cli):
    result = cli("db", "upgrade")
    assert result.code == 0 and "database at revision" in result.out


def test_every_subcommand_has_help(cli):
    from newsletter.cli import cli as group

    for name in ("subscribers", "db"):
        sub = group.commands[name]
        assert sub.help
        for command_name, command in sub.commands.items():
            assert command.help and len(command.help) > 20, command_name
            assert cli(name, command_name, "--help").code == 0


def test_database_errors_are_one_line(run, monkeypatch, tmp_path):
    db = tmp_path / "ro.db"
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", f"sqlite:///{db}")
    assert run("subscribers", "add", "a@example.com").code == 0
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", f"sqlite:///file:{db}?mode=ro&uri=true")
    result = run("subscribers", "add", "b@example.com")
    assert result.code == 1
    assert result.err.strip() == "error: database: attempt to write a readonly database"
    (tmp_path / "junk.db").write_text("this is not a database")
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", f"sqlite:///{tmp_path / 'junk.db'}")
    result = run("subscribers", "count")
    assert result.code == 1 and len(result.err.strip().splitlines()) == 1
    assert result.err.startswith("error: ") and "Traceback" not in result.err


def test_unwritable_output_is_one_line(run, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = run("preview", "digests/2026-04-22-open-models-weekly.md", "--out", blocker / "x.html")
    assert result.code == 1 and len(result.err.strip().splitlines()) == 1
    assert result.err.startswith(f"error: {blocker}")


def test_dry_run_import_creates_no_database(run, monkeypatch, tmp_path):
    db = tmp_path / "new.db"
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", f"sqlite:///{db}")
    result = run("subscribers", "import", DATA / "generic.csv", "--dry-run")
    assert result.code == 0 and "would add 8" in result.out
    assert not db.exists()
