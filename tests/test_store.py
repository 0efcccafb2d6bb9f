import datetime as dt
import hashlib
import os
import re
import select
import subprocess
import sys

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from newsletter.errors import StoreConflict, StoreError, SubscriberError
from newsletter.store import (Base, categories, create_engine, current_revision, events, head_revision,
                              open_engine, upgrade)
from newsletter.subscribers import Consent, ConsentMethod, Status, Subscribers

from .conftest import ROOT
from .test_subscribers import secret_key  # noqa: F401 (the key comes from the environment)


def test_the_revisions_read_from_file_names_are_alembics():
    """A command checks the revision without Alembic (store.head_revision): the migrations' file
    names must say what Alembic reads in them, every one, and the database's revision after an
    upgrade must be what Alembic itself reads."""
    from newsletter import store

    scripts = store._scripts()
    assert store.head_revision() == scripts.get_current_head()
    assert store._known_revisions() == {script.revision for script in scripts.walk_revisions()}


def test_first_use_creates_the_schema(db_url):
    engine = open_engine(db_url)
    assert current_revision(engine) == head_revision()
    with engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == head_revision()
    assert {"readers", "categories", "reader_categories", "suppressions", "events"} <= set(
        sa.inspect(engine).get_table_names())
    engine.dispose()


def test_models_match_the_migrations(db_url):
    engine = open_engine(db_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    engine.dispose()


def test_upgrade_from_the_first_schema_keeps_every_row(db_url, session_settings):
    engine = create_engine(db_url)
    upgrade(engine, "0001")
    now = "2025-01-02 03:04:05+00:00"
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO categories (slug, name) VALUES ('ai-tech', 'AI Tech')"))
        for i in range(50):
            conn.execute(sa.text(
                "INSERT INTO readers (email, name, status, token, created_at, status_changed_at, "
                "confirmed_at, consent_at, consent_method, consent_ip) VALUES (:email, :name, "
                ":status, :token, :now, :now, :now, :now, 'form', '198.51.100.1')"),
                {"email": f"old{i}@example.com", "name": f"Old {i}",
                 "status": "unsubscribed" if i == 7 else "active", "token": f"token-{i:040d}", "now": now})
        conn.execute(sa.text("INSERT INTO reader_categories (reader_id, category) "
                             "SELECT id, 'ai-tech' FROM readers"))
        # A reader forgotten back then: the hash had no key.
        forgotten = hashlib.sha256(b"newsletter-forgotten:gone@example.com").hexdigest()
        conn.execute(sa.text("INSERT INTO suppressions (email_hash, reason, created_at) "
                             "VALUES (:hash, 'forgotten', :now)"), {"hash": forgotten, "now": now})
    engine.dispose()

    subs = Subscribers.open(db_url, session_settings.categories)  # migrates on first use
    assert current_revision(subs.engine) == head_revision()
    readers = list(subs.iter_readers())
    assert len(readers) == 50
    old = subs.get("old7@example.com")
    assert old.status == Status.UNSUBSCRIBED and old.categories == ("ai-tech",)
    assert old.token == f"token-{7:040d}" and old.consent_ip == "198.51.100.1"
    assert old.consent_at.year == 2025 and old.consent_source is None
    subs.add("new@example.com", consent=Consent(ConsentMethod.CLI, source="test"))  # the new column works
    assert subs.get("new@example.com").consent_source == "test"
    with pytest.raises(SubscriberError, match="gone@example.com was forgotten"):  # and stays forgotten
        subs.add("Gone@example.com", consent=Consent(ConsentMethod.CLI))
    subs.close()


def test_bad_database_url_is_one_line(tmp_path):
    with pytest.raises(StoreError, match="cannot open database"):
        open_engine(f"sqlite:///{tmp_path}/no/such/dir/x.db")
    with pytest.raises(StoreError, match="cannot use database URL"):
        open_engine("nosuchdb://x")


# -- opening without migrating, or without creating (a server) -------------------------------------

def shown_url(url):
    return sa.engine.make_url(url).render_as_string(hide_password=True)


def test_a_server_never_migrates(db_url, settings):
    engine = create_engine(db_url)
    engine.connect().close()  # the database exists, with no schema
    with pytest.raises(StoreError) as excinfo:
        open_engine(db_url, migrate=False)
    assert str(excinfo.value) == (f"database {shown_url(db_url)} has no schema yet: "
                                  "run `newsletter db upgrade`")
    assert current_revision(engine) is None

    upgrade(engine, "0004")
    with pytest.raises(StoreError) as excinfo:
        Subscribers.from_settings(settings.with_overrides(database_url=db_url), migrate=False, create=False)
    assert str(excinfo.value) == (f"database {shown_url(db_url)} is at revision 0004, this version needs "
                                  f"{head_revision()}: run `newsletter db upgrade`")
    assert current_revision(engine) == "0004"  # untouched

    open_engine(db_url).dispose()  # what `newsletter db upgrade` does
    server = settings.with_overrides(database_url=db_url)
    subs = Subscribers.from_settings(server, migrate=False, create=False)
    assert current_revision(subs.engine) == head_revision()
    subs.close()
    engine.dispose()


@pytest.mark.parametrize("migrate", [True, False])
def test_a_database_newer_than_the_code_is_refused(db_url, migrate):
    engine = open_engine(db_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '0099_future'"))
    with pytest.raises(StoreError) as excinfo:
        open_engine(db_url, migrate=migrate)
    assert str(excinfo.value).startswith(f"database {shown_url(db_url)} is at revision 0099_future, which "
                                         "this version of newsletter does not know")
    assert current_revision(engine) == "0099_future"
    engine.dispose()


def test_a_missing_sqlite_file_is_never_created(tmp_path, monkeypatch, settings):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "subscribers.db"
    missing = (f"database file {path} does not exist (run `newsletter db upgrade` to create it, "
               "or check database_url)")
    for url in (f"sqlite:///{path}", "sqlite:///subscribers.db"):
        with pytest.raises(StoreError) as excinfo:
            open_engine(url, create=False)
        assert str(excinfo.value) == missing
        with pytest.raises(StoreError) as excinfo:
            Subscribers.from_settings(settings.with_overrides(database_url=url), migrate=False, create=False)
        assert str(excinfo.value) == missing
    assert list(tmp_path.iterdir()) == []


def test_a_database_file_removed_under_a_server_is_not_created_again(tmp_path):
    url = f"sqlite:///{tmp_path / 'subscribers.db'}"
    open_engine(url).dispose()
    engine = open_engine(url, migrate=False, create=False)
    engine.dispose()  # the pool's connections closed: the next query opens the file again
    for name in ("subscribers.db", "subscribers.db-wal", "subscribers.db-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    with pytest.raises(StoreError, match="^database: unable to open database file$"):
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    assert list(tmp_path.iterdir()) == []


# -- database errors are StoreErrors -------------------------------------------------------------

def test_database_errors_are_store_errors(subs, db_url):
    other = create_engine(db_url)
    with other.begin() as conn:
        conn.execute(sa.text("DROP TABLE reader_categories"))
    with pytest.raises(StoreError) as excinfo:
        subs.counts()
    assert re.fullmatch(r'database: (no such table: reader_categories|relation "reader_categories" '
                        r'does not exist)', str(excinfo.value))
    driver_error = excinfo.value.__cause__  # what --debug shows
    assert type(driver_error).__module__.split(".")[0] in ("sqlite3", "psycopg")

    with pytest.raises(StoreConflict, match="^database: .*(UNIQUE|unique)"):
        with subs.engine.begin() as conn:  # a second category with the same slug
            conn.execute(sa.insert(categories).values(slug="ai-tech", name="Again"))
    other.dispose()


def test_a_bug_is_not_dressed_as_a_database_error(subs):
    with pytest.raises(sa.exc.StatementError) as excinfo:  # a naive datetime: our mistake, not the database's
        with subs.engine.begin() as conn:
            conn.execute(sa.insert(events).values(kind="x", at=dt.datetime(2026, 1, 1)))
    assert not isinstance(excinfo.value, StoreError)


# -- migrations from several processes at once -----------------------------------------------------

RACER = """
import os, select, sys

ready, go, how, url, config = int(sys.argv[1]), int(sys.argv[2]), *sys.argv[3:]
if how == "cli":
    from newsletter.cli import main
else:
    from newsletter.store import open_engine

os.write(ready, b"r")
if not select.select([go], [], [], 60)[0]:  # released together: when the test closes the pipe
    sys.exit("never released")
if how == "cli":
    sys.exit(main(["--config", config, "db", "upgrade"]))
open_engine(url).dispose()  # what every command does on first use
"""


def test_migrations_from_several_processes_at_once_leave_one_schema(db_url, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env |= {"PYTHONPATH": str(ROOT), "NEWSLETTER_DATABASE_URL": db_url}
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    racers = [subprocess.Popen(
        [sys.executable, "-c", RACER, str(ready_w), str(go_r), "cli" if n % 2 else "library", db_url,
         ROOT / "newsletter.toml"], cwd=tmp_path, env=env, pass_fds=(ready_w, go_r),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for n in range(6)]
    os.close(ready_w)
    os.close(go_r)
    try:
        got = b""  # a byte from each process once it is ready, with a deadline
        while len(got) < 6 and select.select([ready_r], [], [], 60)[0]:
            got += os.read(ready_r, 6) or b"(a process ended)"
        assert got == b"r" * 6, [r.communicate(timeout=60) for r in racers]
        os.close(go_w)  # go
        go_w = None
        results = [(*r.communicate(timeout=120), r.returncode) for r in racers]
    finally:
        for racer in racers:
            racer.kill()
        os.close(ready_r)
        if go_w is not None:  # the test failed before the release
            os.close(go_w)
    assert [code for _, _, code in results] == [0] * 6, results

    engine = create_engine(db_url)
    assert current_revision(engine) == head_revision()
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM alembic_version")).scalar() == 1
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    engine.dispose()
