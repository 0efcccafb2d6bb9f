from __future__ import annotations

import os
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from newsletter.cli import main
from newsletter.config import load_settings
from newsletter.digest import load_digest
from newsletter.render import Renderer

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "digests" / "2026-04-22-open-models-weekly.md"
TEST_KEY = "test-secret-key-" + "k" * 32
ARTIFACTS: list[str] = []  # paths the terminal summary prints (screenshots, ...)


@pytest.fixture
def settings(tmp_path):
    """The repository's own settings, with output going to a temporary folder."""
    loaded = load_settings(ROOT / "newsletter.toml", env={})
    return loaded.with_overrides(output_dir=tmp_path / "out")


@pytest.fixture(scope="session")
def session_settings():
    return load_settings(ROOT / "newsletter.toml", env={})


@pytest.fixture(scope="session")
def renderer(session_settings):
    return Renderer(session_settings)


@pytest.fixture(scope="session")
def example(session_settings):
    return load_digest(EXAMPLE, session_settings)


@pytest.fixture
def write_digest(tmp_path):
    """Write a digest file from a dedented string and return its path."""
    def write(text: str, name: str = "issue.md") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return path
    return write


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def run(capsys, monkeypatch):
    """Run the `newsletter` CLI in-process from a folder holding the repo's newsletter.toml."""
    monkeypatch.chdir(ROOT)
    for var in [v for v in os.environ if v.startswith("NEWSLETTER_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", TEST_KEY)  # never a key file in the repository

    def invoke(*args: str) -> Result:
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return Result(int(code), captured.out, captured.err)
    return invoke


def pytest_terminal_summary(terminalreporter):
    if ARTIFACTS:
        terminalreporter.section("artifacts")
        for line in ARTIFACTS:
            terminalreporter.write_line(line)


# -- databases: every store test runs on SQLite and on the machine's PostgreSQL ------------------

PG_URL = os.environ.get("NEWSLETTER_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A fresh, empty database: an SQLite file, or a schema of its own in PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'subscribers.db'}"
        return
    import uuid

    import sqlalchemy as sa

    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_URL)
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    except sa.exc.OperationalError as e:  # never skip: CI must test PostgreSQL
        pytest.fail(f"PostgreSQL at {PG_URL} is not reachable ({e.orig}); "
                    "scripts/test.sh starts it")
    yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    with admin.begin() as conn:
        conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


@pytest.fixture
def subs(db_url, session_settings):
    from newsletter.subscribers import Subscribers

    store = Subscribers.open(db_url, session_settings.categories)
    yield store
    store.close()


# -- sending -----------------------------------------------------------------------------------

@pytest.fixture
def fake_resend(monkeypatch):
    """The fake Resend API on 127.0.0.1, with the real SDK pointed at it."""
    from .fake_resend import FakeResend

    server = FakeResend().start()
    monkeypatch.setenv("RESEND_API_KEY", server.state.api_key)
    monkeypatch.setenv("RESEND_API_URL", server.url)
    yield server
    server.stop()


# -- the reader web app ------------------------------------------------------------------------

@dataclass
class Web:
    app: object
    client: object
    subs: object
    settings: object


@pytest.fixture
def web(subs, session_settings, tmp_path):
    """The reader app on a fresh database (SQLite and PostgreSQL), with Flask's test client."""
    from newsletter.web import create_app

    settings = session_settings.with_overrides(outbox_dir=tmp_path / "outbox", output_dir=tmp_path / "out")
    app = create_app(settings, subscribers=subs, key=TEST_KEY.encode())
    return Web(app, app.test_client(), subs, settings)


def form_value(html: str, name: str) -> str:
    """The value of the hidden field `name` in a page (the first one)."""
    import re

    match = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert match, f"no field {name} in the page"
    return match.group(1)


class Server:
    """`newsletter serve --port 0` in a process of its own; `url` once it listens."""

    def __init__(self, env: dict, *args: str, deadline: float = 60.0):
        import queue
        import re
        import subprocess
        import sys
        import threading
        import time

        self.process = subprocess.Popen([sys.executable, "-m", "newsletter", "serve", "--port", "0", *args],
                                        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        found: queue.Queue = queue.Queue()

        def read() -> None:
            for line in self.process.stderr:
                self.lines.append(line)
                if match := re.search(r"on (http://127\.0\.0\.1:\d+)", line):
                    found.put(match.group(1))
            found.put(None)

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        try:
            self.url = found.get(timeout=deadline)
        except queue.Empty:
            self.url = None
        if self.url is None:
            self.stop()
            pytest.fail("newsletter serve did not start: " + "".join(self.lines))
        self._started = time.monotonic()

    def said(self, text: str, deadline: float = 30.0) -> bool:
        """Whether the server printed `text` (waiting for it up to `deadline` seconds)."""
        import time

        end = time.monotonic() + deadline
        while not any(text in line for line in self.lines):
            if time.monotonic() > end or self.process.poll() is not None:
                return any(text in line for line in self.lines)
            time.sleep(0.02)  # lines arrive on the reader thread
        return True

    def stop(self) -> int:
        import signal
        import subprocess

        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(timeout=20)  # every line the server wrote is in self.lines
        return self.process.returncode


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the bounce mailbox: a throw-away Dovecot IMAP server ----------------------------------------

@pytest.fixture(scope="session")
def dovecot():
    """Dovecot on 127.0.0.1 for the whole session (skipped, saying why, where it is missing)."""
    from .imap_server import Dovecot, dovecot_binary

    binary = dovecot_binary()
    if binary is None:
        pytest.skip("Dovecot is not installed (Debian package dovecot-imapd; scripts/test.sh installs it)")
    server = Dovecot(binary)
    yield server
    server.stop()


@pytest.fixture
def imap_account(dovecot):
    """The Dovecot server's user, with an empty mailbox."""
    return dovecot.empty_account()
