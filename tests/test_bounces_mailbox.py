"""The bounce mailbox for real: emails sent over SMTP (aiosmtpd), their bounces and complaints in a
Dovecot IMAP mailbox, read by `newsletter bounces fetch` into the readers' database (SQLite and
PostgreSQL)."""

from __future__ import annotations

import imaplib
import socket
from email import message_from_bytes, policy

import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller

from newsletter import mailbox
from newsletter.errors import MailboxError
from newsletter.mailbox import Mailbox, fetch_reports
from newsletter.reports import Reports
from newsletter.store import deliveries, readers, reports
from newsletter.subscribers import Consent, ConsentMethod, Status

from .conftest import EXAMPLE, free_port
from .test_bounces import SAMPLES, dsn

ISSUE = EXAMPLE.stem
READERS = ["ana@example.com", "bo@example.com", "cy@example.com"]


class Crash(BaseException):
    """The process dying at that line: nothing catches it."""


class Collector:
    def __init__(self):
        self.messages: dict[str, bytes] = {}

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        for address in envelope.rcpt_tos:
            self.messages[address] = envelope.content
        return "250 Message accepted"


@pytest.fixture
def smtp_server():
    collector = Collector()
    with socket.socket() as probe:  # aiosmtpd checks its own port once started: it needs a real one
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(collector, hostname="127.0.0.1", port=port)
    controller.start()
    yield collector, port
    controller.stop()


def mailbox_env(account, url: str) -> dict[str, str]:
    return {"NEWSLETTER_DATABASE_URL": url, "NEWSLETTER_BOUNCE_IMAP_HOST": "127.0.0.1",
            "NEWSLETTER_BOUNCE_IMAP_PORT": str(account.port), "NEWSLETTER_BOUNCE_IMAP_SECURITY": "none",
            "NEWSLETTER_BOUNCE_IMAP_USER": account.user, "NEWSLETTER_BOUNCE_PASSWORD": account.password,
            "NEWSLETTER_REQUEST_TIMEOUT": "10"}


@pytest.fixture
def cli(run, monkeypatch, imap_account, db_url, subs):
    """The `newsletter` CLI with the readers' database at `db_url` and the bounce mailbox set."""
    for name, value in mailbox_env(imap_account, db_url).items():
        monkeypatch.setenv(name, value)
    return run


@pytest.fixture
def sent(cli, monkeypatch, smtp_server, subs):
    """The example issue sent over SMTP, through `newsletter send`, to three readers: what each got."""
    collector, port = smtp_server
    for email in READERS:
        subs.add(email, consent=Consent(ConsentMethod.CLI))
    for name, value in {"NEWSLETTER_PROVIDER": "smtp", "NEWSLETTER_SMTP_HOST": "127.0.0.1",
                        "NEWSLETTER_SMTP_PORT": str(port), "NEWSLETTER_SMTP_SECURITY": "none"}.items():
        monkeypatch.setenv(name, value)
    result = cli("send", EXAMPLE, "--yes")
    assert result.code == 0, result.err
    assert sorted(collector.messages) == READERS
    return collector.messages


def arf(original: bytes, recipient: str | None) -> bytes:
    """A feedback report (a complaint) about `original`, as mailbox providers send them."""
    rcpt = f"Original-Rcpt-To: <{recipient}>\r\n" if recipient else ""
    return ("Message-ID: <arf-1@fbl.example>\r\nFrom: fbl@fbl.example\r\nTo: fbl@newsletter.example.com\r\n"
            "Subject: complaint\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/report; report-type=feedback-report; boundary="F"\r\n\r\n'
            "--F\r\nContent-Type: text/plain\r\n\r\nA reader marked this as spam.\r\n"
            "--F\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\n"
            f"User-Agent: ExampleFBL/1.0\r\nVersion: 1\r\n{rcpt}\r\n"
            "--F\r\nContent-Type: message/rfc822\r\n\r\n").encode() + original + b"\r\n--F--\r\n"


def count(engine, table) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar()


def test_a_bounce_for_an_email_sent_over_smtp_stops_its_reader_once(cli, sent, subs, imap_account):
    # Our Message-ID is about a line long: usually folded onto a line of its own, which the email
    # package, reading it back, gives as " <...>"; the provider stored it as it set it, "<...>".
    message_id = message_from_bytes(sent["ana@example.com"], policy=policy.default)["Message-ID"].strip()
    ana = subs.get("ana@example.com")
    with subs.engine.connect() as conn:  # the id the provider stored is the one in the email
        stored = conn.execute(sa.select(deliveries.c.message_id).where(deliveries.c.reader_id == ana.id)).scalar()
    assert stored == message_id and stored.startswith("<")
    bounce = dsn(sent["ana@example.com"], "ana@mx.example.com", "5.1.1",
                 "smtp; 550 5.1.1 <ana@mx.example.com>: Recipient address rejected: User unknown")
    imap_account.append("INBOX", bounce)

    first = cli("bounces", "fetch")
    assert first.code == 0, first.err
    assert first.out == "1 message read: 1 report stored, 0 seen before, 1 reader stopped, 0 not reports\n"
    assert subs.get("ana@example.com").status == Status.BOUNCED
    assert {subs.get(e).status for e in READERS[1:]} == {Status.ACTIVE}
    event = subs.last_status_event(ana.id)
    assert event["new"] == "bounced" and event["issue"] == ISSUE and event["source"] == "mailbox"
    assert event["reason"] == ("permanent bounce: 550 5.1.1 <ana@mx.example.com>: Recipient address "
                               "rejected: User unknown")
    assert imap_account.messages("INBOX") == []
    [moved] = imap_account.messages("Processed")
    assert b"ana@mx.example.com" in moved and message_id.encode() in moved

    again = cli("bounces", "fetch")
    assert again.out == "0 messages read: 0 reports stored, 0 seen before, 0 readers stopped, 0 not reports\n"
    imap_account.append("INBOX", bounce)  # the same report, delivered twice
    twice = cli("bounces", "fetch")
    assert twice.out == "1 message read: 0 reports stored, 1 seen before, 0 readers stopped, 0 not reports\n"
    assert count(subs.engine, reports) == 1
    assert subs.last_status_event(ana.id) == event


def test_a_complaint_stops_its_reader_and_a_transient_bounce_is_only_counted(cli, sent, subs, imap_account):
    imap_account.append("INBOX", arf(sent["bo@example.com"], None))  # matched by the Message-ID alone
    imap_account.append("INBOX", dsn(sent["cy@example.com"], "cy@example.com", "4.2.2",
                                     "smtp; 452 4.2.2 Mailbox full", message_id="<dsn-2@mx.example>"))
    imap_account.append("INBOX", (SAMPLES / "not_a_report.eml").read_bytes())
    result = cli("bounces", "fetch")
    assert result.out == "3 messages read: 2 reports stored, 0 seen before, 1 reader stopped, 1 not a report\n"
    bo, cy = subs.get("bo@example.com"), subs.get("cy@example.com")
    assert bo.status == Status.COMPLAINED
    assert subs.last_status_event(bo.id)["reason"] == "complaint: abuse (ExampleFBL/1.0)"
    assert cy.status == Status.ACTIVE and subs.last_status_event(cy.id) is None, "no status change"
    with subs.engine.connect() as conn:
        assert conn.execute(sa.select(readers.c.soft_bounces).where(readers.c.id == cy.id)).scalar() == 1
    assert imap_account.messages("INBOX") == [] and len(imap_account.messages("Processed")) == 3


def settings_for(session_settings, account, url: str, **changes):
    return session_settings.with_overrides(**{
        "database_url": url, "bounce_imap_host": "127.0.0.1", "bounce_imap_port": account.port,
        "bounce_imap_security": "none", "bounce_imap_user": account.user, "request_timeout": 10.0, **changes})


@pytest.fixture
def library(subs, imap_account, db_url, session_settings):
    """Settings for `fetch_reports`, a reader, and a bounce for that reader in the mailbox."""
    subs.add("ana@example.com", consent=Consent(ConsentMethod.CLI))
    imap_account.append("INBOX", dsn(b"To: ana@example.com\r\n\r\nhi\r\n", "ana@example.com", "5.1.1", None))
    env = {mailbox.PASSWORD_VAR: imap_account.password}
    return settings_for(session_settings, imap_account, db_url), env


def test_a_crash_before_the_reports_are_stored_leaves_the_message_in_place(library, subs, imap_account,
                                                                           monkeypatch):
    settings, env = library

    def crash(self, report):
        raise Crash()

    with monkeypatch.context() as patch:
        patch.setattr(Reports, "record", crash)
        with pytest.raises(Crash):
            fetch_reports(settings, subs.engine, env)
    assert len(imap_account.messages("INBOX")) == 1, "not moved before its report was stored"
    assert imap_account.messages("Processed") == [] and count(subs.engine, reports) == 0
    fetched = fetch_reports(settings, subs.engine, env)
    assert (fetched.read, fetched.stored, fetched.stopped) == (1, 1, 1)
    assert imap_account.messages("INBOX") == [] and len(imap_account.messages("Processed")) == 1


def test_a_crash_after_the_reports_are_stored_reads_the_message_again_harmlessly(library, subs, imap_account,
                                                                                 monkeypatch):
    settings, env = library
    with monkeypatch.context() as patch:
        patch.setattr(Mailbox, "move", lambda self, uids: (_ for _ in ()).throw(Crash()))
        with pytest.raises(Crash):
            fetch_reports(settings, subs.engine, env)
    assert subs.get("ana@example.com").status == Status.BOUNCED
    assert len(imap_account.messages("INBOX")) == 1
    fetched = fetch_reports(settings, subs.engine, env)
    assert (fetched.read, fetched.stored, fetched.duplicates, fetched.stopped) == (1, 0, 1, 0)
    assert imap_account.messages("INBOX") == [] and count(subs.engine, reports) == 1


@pytest.mark.parametrize("move", [True, False], ids=["MOVE", "COPY-then-EXPUNGE"])
def test_many_messages_are_read_in_chunks_and_all_moved(subs, db_url, imap_account, session_settings,
                                                        monkeypatch, move):
    settings = settings_for(session_settings, imap_account, db_url, bounce_imap_done_folder="Bounces – done")
    for i in range(7):
        subs.add(f"r{i}@example.com", consent=Consent(ConsentMethod.CLI))
        imap_account.append("INBOX", dsn(b"To: x\r\n\r\n", f"r{i}@example.com", "5.1.1", None,
                                         message_id=f"<d{i}@mx.example>"))
    for name in ("not_a_report.eml", "broken_report.eml", "out_of_office.eml"):
        imap_account.append("INBOX", (SAMPLES / name).read_bytes())
    monkeypatch.setattr(mailbox, "CHUNK", 3)
    commands = []
    uid = imaplib.IMAP4.uid
    monkeypatch.setattr(imaplib.IMAP4, "uid", lambda self, *a: commands.append(a[0]) or uid(self, *a))
    if not move:
        enter = Mailbox.__enter__
        monkeypatch.setattr(Mailbox, "__enter__", lambda self: setattr(
            enter(self), "capabilities", self.capabilities - {"MOVE"}) or self)
    fetched = fetch_reports(settings, subs.engine, {mailbox.PASSWORD_VAR: imap_account.password})
    assert str(fetched) == "10 messages read: 7 reports stored, 0 seen before, 7 readers stopped, 3 not reports"
    assert commands.count("FETCH") == 4, "10 messages, 3 at a time"
    assert ("MOVE" in commands) == move and ("EXPUNGE" in commands) != move
    assert imap_account.messages("INBOX") == []
    imap = imap_account.client()
    try:
        listed = b" ".join(imap.list()[1])
    finally:
        imap.logout()
    assert b'"Bounces &IBM- done"' in listed, "the done folder, created, its name in modified UTF-7"
    assert len(imap_account.messages("Bounces &IBM- done")) == 10


# -- what goes wrong: one line, never a traceback or the password -------------------------------------

@pytest.mark.parametrize("change, message", [
    ({"NEWSLETTER_BOUNCE_PASSWORD": "not-the-password"},
     "(user {user}, folder 'INBOX'): login refused ([AUTHENTICATIONFAILED] Authentication failed.)"),
    ({"NEWSLETTER_BOUNCE_IMAP_PORT": "{closed}"}, "cannot connect ([Errno 111] Connection refused"),
    ({"NEWSLETTER_BOUNCE_IMAP_FOLDER": "Nowhere"}, "(user {user}, folder 'Nowhere'): the folder is missing"),
    ({"NEWSLETTER_BOUNCE_PASSWORD": ""}, "set the password in $NEWSLETTER_BOUNCE_PASSWORD"),
    ({"NEWSLETTER_BOUNCE_IMAP_USER": ""}, "set bounce_imap_user"),
    ({"NEWSLETTER_BOUNCE_IMAP_HOST": ""}, "no bounce mailbox is configured: set bounce_imap_host and "
                                          "bounce_imap_user in newsletter.toml"),
    ({"NEWSLETTER_BOUNCE_IMAP_SECURITY": "ssl"}, "cannot connect ("),  # TLS spoken to a plain port
], ids=["wrong password", "unreachable", "no such folder", "no password", "no user", "not configured",
        "wrong security"])
def test_a_mailbox_that_cannot_be_read_is_one_line(cli, monkeypatch, imap_account, change, message):
    imap_account.append("INBOX", dsn(b"To: x\r\n\r\n", "a@example.com", "5.1.1", None))
    for name, value in change.items():
        monkeypatch.setenv(name, value.format(closed=free_port()))
    result = cli("bounces", "fetch")
    assert result.code == 1 and result.out == ""
    assert result.err.startswith("error: ") and result.err.count("\n") == 1, result.err
    assert message.format(user=imap_account.user) in result.err
    assert imap_account.password not in result.err and "not-the-password" not in result.err
    if "HOST" not in str(change):
        assert "127.0.0.1" in result.err
    assert len(imap_account.messages("INBOX")) == 1, "nothing was moved"


def test_a_missing_database_is_not_reached_before_the_mailbox_settings_are_checked(run, tmp_path, monkeypatch):
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", f"sqlite:///{tmp_path / 'none.db'}")
    result = run("bounces", "fetch")
    assert result.code == 1 and "no bounce mailbox is configured" in result.err
    assert not (tmp_path / "none.db").exists()


# -- TLS: IMAPS and STARTTLS with a certificate the machine trusts --------------------------------

@pytest.mark.parametrize("security", ["ssl", "starttls"])
def test_the_mailbox_is_read_over_tls(subs, db_url, imap_account, session_settings, monkeypatch, security):
    if imap_account.cert is None:
        pytest.skip("openssl is missing: the Dovecot of the tests has no certificate")
    port = imap_account.ssl_port if security == "ssl" else imap_account.port
    settings = settings_for(session_settings, imap_account, db_url, bounce_imap_security=security,
                            bounce_imap_port=port)
    env = {mailbox.PASSWORD_VAR: imap_account.password}
    imap_account.append("INBOX", (SAMPLES / "not_a_report.eml").read_bytes())
    with pytest.raises(MailboxError, match=r"certificate is not trusted \(self.signed certificate\)"):
        fetch_reports(settings, subs.engine, env)
    monkeypatch.setenv("SSL_CERT_FILE", str(imap_account.cert))  # what OpenSSL trusts, for this test
    assert fetch_reports(settings, subs.engine, env).not_reports == 1
