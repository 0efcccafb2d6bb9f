"""The whole way, with real processes: `newsletter send` writes or sends the emails, a real
`newsletter serve` answers their List-Unsubscribe link as Gmail calls it (RFC 8058)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from email import message_from_bytes, policy

import pytest
import requests
import sqlalchemy as sa

from newsletter.store import deliveries
from newsletter.subscribers import Consent, ConsentMethod, Status, Subscribers

from .conftest import EXAMPLE, ROOT, TEST_KEY, Server

COMMAND = [sys.executable, "-m", "newsletter"]


def environment(db_url, tmp_path, **more) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    return dict(env, NEWSLETTER_CONFIG=str(ROOT / "newsletter.toml"), NEWSLETTER_DATABASE_URL=db_url,
                NEWSLETTER_SECRET_KEY=TEST_KEY, NEWSLETTER_OUTBOX_DIR=str(tmp_path / "outbox"), **more)


def add_readers(db_url, settings, emails) -> None:
    subs = Subscribers.open(db_url, settings.categories)
    for i, email in enumerate(emails):
        subs.add(email, categories=[("ai-tech",), ("essays",), ()][i % 3], consent=Consent(ConsentMethod.CLI))
    subs.close()


def status_of(db_url, settings, email) -> Status:
    subs = Subscribers.open(db_url, settings.categories)
    try:
        return subs.require(email).status
    finally:
        subs.close()


def test_the_list_unsubscribe_link_of_a_sent_email_unsubscribes_through_a_real_server(
        db_url, session_settings, tmp_path):
    readers = [f"e{i}@example.com" for i in range(4)]
    add_readers(db_url, session_settings, readers)
    env = environment(db_url, tmp_path)
    server = Server(env)
    assert server.said(f"confirmation emails go to the outbox: {tmp_path / 'outbox'}")
    try:
        sent = subprocess.run([*COMMAND, "send", str(EXAMPLE), "--yes"], capture_output=True, text=True,
                              env=dict(env, NEWSLETTER_BASE_URL=server.url), timeout=120)
        assert sent.returncode == 0, sent.stderr
        emails = [message_from_bytes(p.read_bytes(), policy=policy.default)
                  for p in sorted((tmp_path / "outbox").glob("*.eml"))]
        message = next(m for m in emails if m["To"] == "e1@example.com")
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        url = message["List-Unsubscribe"].strip("<>")
        assert url.startswith(server.url + "/u/")

        # What a mail scanner does first: fetch it. Nothing changes.
        assert requests.get(url, timeout=10).status_code == 200
        assert status_of(db_url, session_settings, "e1@example.com") == Status.ACTIVE
        # What Gmail does: POST the form body, no cookie, no form token.
        answer = requests.post(url, data={"List-Unsubscribe": "One-Click"}, timeout=10)
        assert answer.status_code == 200
        assert answer.headers["Referrer-Policy"] == "no-referrer"
        assert status_of(db_url, session_settings, "e1@example.com") == Status.UNSUBSCRIBED
        assert status_of(db_url, session_settings, "e0@example.com") == Status.ACTIVE
        assert requests.get(server.url + "/healthz", timeout=10).text == "ok\n"
    finally:
        assert server.stop() == 0, "".join(server.lines)
    log = "".join(server.lines)
    assert "reader 2 unsubscribed (one-click unsubscribe)" in log
    assert url.rsplit("/", 1)[1] not in log and "e1@example.com" not in log


def test_an_unsubscribe_during_a_send_stops_that_readers_copy(db_url, session_settings, tmp_path, fake_resend):
    readers = [f"r{i:03d}@example.com" for i in range(60)]
    add_readers(db_url, session_settings, readers)
    env = environment(db_url, tmp_path)
    server = Server(env)
    last = readers[-1]
    subs = Subscribers.open(db_url, session_settings.categories)
    token = subs.require(last).token
    try:
        sending = subprocess.Popen(
            [*COMMAND, "send", str(EXAMPLE), "--yes"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=dict(env, NEWSLETTER_BASE_URL=server.url, NEWSLETTER_PROVIDER="resend", NEWSLETTER_SEND_RATE="4",
                     NEWSLETTER_BATCH_SIZE="5", RESEND_API_KEY=fake_resend.state.api_key,
                     RESEND_API_URL=fake_resend.url))
        deadline = time.monotonic() + 60
        while sum(fake_resend.addresses().values()) < 10:  # the run is under way
            assert sending.poll() is None, sending.stderr.read()
            assert time.monotonic() < deadline, "no deliveries after 60 s"
            time.sleep(0.05)  # the fake server counts; there is no event to wait on
        assert fake_resend.addresses()[last] == 0
        answer = requests.post(f"{server.url}/u/{token}", data={"List-Unsubscribe": "One-Click"}, timeout=10)
        assert answer.status_code == 200
        out, err = sending.communicate(timeout=120)
        assert sending.returncode == 0, err
    finally:
        server.stop()
    got = fake_resend.addresses()
    assert got[last] == 0
    assert got == Counter({email: 1 for email in readers[:-1]})
    with subs.engine.connect() as conn:
        state = conn.execute(sa.select(deliveries.c.state).where(
            deliveries.c.reader_id == subs.require(last).id)).scalar_one()
    subs.close()
    assert state == "skipped"
    assert "skipped 1" in out


def test_serve_refuses_a_missing_or_outdated_database_with_the_command_to_run(run, monkeypatch, tmp_path):
    from newsletter.store import create_engine, upgrade

    missing = tmp_path / "subscribers.db"
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", f"sqlite:///{missing}")
    result = run("serve", "--port", "0")
    assert result.code == 1
    assert result.err.count("\n") == 1 and "Traceback" not in result.err
    assert str(missing) in result.err and "newsletter db upgrade" in result.err
    assert not missing.exists(), "the server never creates a database"

    engine = create_engine(f"sqlite:///{missing}")
    upgrade(engine, "0005")  # a database an older version left
    engine.dispose()
    result = run("serve", "--port", "0")
    assert result.code == 1 and result.err.count("\n") == 1
    assert "is at revision 0005" in result.err and "run `newsletter db upgrade`" in result.err

    assert run("db", "upgrade").code == 0
    from newsletter.web import create_app
    from newsletter.config import load_settings

    assert create_app(load_settings()).url_map  # now it starts


def test_several_server_processes_share_the_port_and_stop_together(db_url, session_settings, tmp_path):
    readers = [f"w{i}@example.com" for i in range(6)]
    add_readers(db_url, session_settings, readers)
    subs = Subscribers.open(db_url, session_settings.categories)
    tokens = [subs.require(email).token for email in readers]
    server = Server(environment(db_url, tmp_path), "--workers", "2")
    try:
        assert server.said("2 processes")
        for token in tokens:  # each on a new connection: the kernel hands them to either process
            answer = requests.post(f"{server.url}/u/{token}", data={"List-Unsubscribe": "One-Click"},
                                   timeout=10, headers={"Connection": "close"})
            assert answer.status_code == 200
    finally:
        code = server.stop()
    assert code == 0, "".join(server.lines)
    with pytest.raises(requests.ConnectionError):  # no process is left listening
        requests.get(server.url + "/healthz", timeout=5)
    assert {subs.require(email).status for email in readers} == {Status.UNSUBSCRIBED}
    subs.close()
