"""Bounce and complaint messages made reports: samples in the formats real servers send, and
hostile or broken input, which must never raise."""

from __future__ import annotations

import time
from email.message import EmailMessage
from pathlib import Path

import pytest

from newsletter.bounces import parse

SAMPLES = Path(__file__).resolve().parent / "data" / "bounces"
OURS = "@newsletter.example.com>"  # the domain of the Message-IDs our providers give


def mid(serial: str) -> str:
    return f"<177686532001.1187.{serial}{OURS}"


# file: [(kind, bounce_type, recipient, message id, detail, report id)]
EXPECTED = {
    "gmail_no_such_user.eml": [(
        "bounced", "permanent", "no.such.reader@gmail.com", mid("4402913376128842211.r7-12"),
        "550-5.1.1 The email account that you tried to reach does not exist. Please try 550-5.1.1 "
        "double-checking the recipient's email address for typos or 550-5.1.1 unnecessary spaces. "
        "550 5.1.1 For more information, go to https://support.google.com/mail/?p=NoSuchUser "
        "a1-20020a170902 - gsmtp",
        "<6627a1c3.050a0220.4d2e1.07b1.GMR@mx.google.com> no.such.reader@gmail.com")],
    "outlook_recipient_not_found.eml": [(
        "bounced", "permanent", "old.reader@contoso.example", mid("5512000000000000001.r7-31"),
        "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
        "<5b6c4a2e-91d3-4f8e-b7a0-c2d1e3f4a5b6@DB9PR01MB7777.eurprd01.prod.exchangelabs.com> "
        "old.reader@contoso.example")],
    "postfix_three_recipients.eml": [
        ("bounced", "permanent", "ana@lists.example.org", mid("6623000000000000002.r7-44"),
         "550 5.1.1 <ana@ana.example>: Recipient address rejected: User unknown in virtual mailbox table",
         "<20260423131004.4Vq9Zk1TbTz9sRd@lists.example.org> ana@lists.example.org"),
        ("bounced", "transient", "bo@lists.example.org", mid("6623000000000000002.r7-44"),
         "4.4.1 (transient failure: no answer from host)",
         "<20260423131004.4Vq9Zk1TbTz9sRd@lists.example.org> bo@lists.example.org")],  # cy: relayed
    "yahoo_no_account.eml": [(
        "bounced", "permanent", "gone.reader@yahoo.com", mid("7734000000000000003.r7-58"),
        "554 delivery error: dd Not a valid recipient - atlas211.free.mail.ne1.yahoo.com",
        "<1776863190.7741.yahoo.bounce.ne1@sonic301.consmr.mail.ne1.yahoo.com> gone.reader@yahoo.com")],
    "postfix_delayed.eml": [(
        "delayed", None, "slow.reader@busy.example", mid("8845000000000000004.r7-60"),
        "452 4.2.2 Mailbox full",
        "<20260422170540.4VqKb21kT7z1xyz@mail.newsletter.example.com> slow.reader@busy.example")],
    "arf_yahoo_abuse.eml": [(
        "complained", None, "annoyed.reader@yahoo.com", mid("9956000000000000005.r7-71"),
        "abuse (Yahoo!-Mail-Feedback/2.0)",
        "<1777021953.91877.cfl.report@arf.mail.yahoo.com> annoyed.reader@yahoo.com")],
    "arf_microsoft_jmrp.eml": [(  # no Original-Rcpt-To: the To of the returned message
        "complained", None, "tired.reader@outlook.com", mid("1067000000000000006.r7-88"),
        "abuse (Microsoft JMRP)",
        "<JMRP.a91c0e5f.20260425094109@jmrp.outlook.example> tired.reader@outlook.com")],
    "qmail_plain.eml": [(
        "bounced", "permanent", "left.years.ago@oldhost.example", mid("2178000000000000007.r7-93"),
        "Remote host said: 550 5.1.1 <left.years.ago@oldhost.example>... User unknown",
        "<20260422130955.19022.qmail@mx.oldhost.example> left.years.ago@oldhost.example")],
    "exchange_legacy_undeliverable.eml": [(
        "bounced", "permanent", "moved.on@fabrikam.example", mid("3289000000000000008.r7-97"),
        "<EXCH01.fabrikam.example #5.1.1>",
        "<F1E2D3C4B5A6978@EXCH01.fabrikam.example> moved.on@fabrikam.example")],
    "not_a_report.eml": [],  # a reader's reply, with an address and a number like a status in it
    "out_of_office.eml": [],
    "broken_report.eml": [],  # a report whose boundary never closes and whose fields are garbage
}


def test_every_sample_has_its_expectation():
    assert sorted(p.name for p in SAMPLES.glob("*.eml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_sample_gives_the_reports_its_sender_meant(name):
    reports = parse((SAMPLES / name).read_bytes())
    got = [(r.kind, r.bounce_type, r.recipient, r.message_id, r.detail, r.report_id) for r in reports]
    assert got == EXPECTED[name]
    for report in reports:
        assert report.source == "mailbox"
        assert report.occurred_at is None or report.occurred_at.tzinfo is not None


def test_the_message_id_is_written_as_our_smtp_provider_stores_it():
    """The provider stores `mail["Message-ID"]` of the email it built: angle brackets included.
    (In the email, depending on its length, it may be folded onto a line of its own: the
    Outlook sample's returned headers have it so.)"""
    from newsletter.providers import Message
    from newsletter.providers.mime import to_mime

    sent = to_mime(Message(key="r1-2", to="reader@example.com", sender="News <digest@newsletter.example.com>",
                           reply_to=None, subject="Hello", html="<p>hi</p>", text="hi", headers={}))
    stored = sent["Message-ID"]
    assert stored.startswith("<") and stored.endswith("@newsletter.example.com>")
    raw = dsn(sent.as_bytes(), "reader@example.com", "5.1.1", "smtp; 550 5.1.1 no such user")
    [report] = parse(raw)
    assert report.message_id == stored


def test_a_report_without_a_message_id_gets_one_from_its_bytes():
    raw = dsn(ORIGINAL, "a@example.com", "5.2.1", None, message_id=None)
    [first], [again] = parse(raw), parse(raw)
    assert first.report_id == again.report_id and first.report_id.startswith("sha256:")
    assert first.report_id.endswith(" a@example.com")
    assert first.detail == "5.2.1 (permanent failure: mailbox disabled, not accepting messages)"
    [other] = parse(raw.replace(b"5.2.1", b"5.2.2"))
    assert other.report_id != first.report_id


def test_a_utf8_recipient_and_a_global_delivery_status():
    raw = dsn(ORIGINAL, "r\\x{E9}ader@example.com", "5.1.1", "smtp; 550 5.1.1 unknown",
              status_type="message/global-delivery-status", address_type="utf-8")
    [report] = parse(raw)
    assert report.recipient == "réader@example.com" and report.bounce_type == "permanent"


def test_failed_without_a_status_is_read_from_the_diagnostic_or_left_undetermined():
    [by_reply] = parse(dsn(ORIGINAL, "a@example.com", None, "smtp; 550 mailbox unavailable"))
    assert by_reply.bounce_type == "permanent"
    [unknown] = parse(dsn(ORIGINAL, "a@example.com", None, "X-Unix; something went wrong"))
    assert (unknown.kind, unknown.bounce_type, unknown.detail) == ("bounced", "undetermined", "something went wrong")


def test_complaint_types_that_are_not_complaints_give_nothing():
    arf = (SAMPLES / "arf_yahoo_abuse.eml").read_bytes()
    assert parse(arf.replace(b"Feedback-Type: abuse", b"Feedback-Type: not-spam")) == []
    assert parse(arf.replace(b"Feedback-Type: abuse", b"Feedback-Type: auth-failure")) == []
    assert [r.detail for r in parse(arf.replace(b"Feedback-Type: abuse", b"Feedback-Type: fraud"))] == [
        "fraud (Yahoo!-Mail-Feedback/2.0)"]


def test_a_plain_bounce_is_read_only_where_the_text_names_the_returned_recipient():
    qmail = (SAMPLES / "qmail_plain.eml").read_bytes()
    assert parse(qmail.replace(b"<left.years.ago@oldhost.example>:", b"<someone.else@oldhost.example>:")
                 .replace(b"said: 550 5.1.1 <left.years.ago", b"said: 550 5.1.1 <someone.else")) == []
    assert parse(qmail.replace(b"Remote host said: 550 5.1.1", b"Remote host said: no")) == []
    forwarded = qmail.replace(b"From: MAILER-DAEMON@mx.oldhost.example", b"From: friend@example.com") \
        .replace(b"Return-Path: <>\n", b"").replace(b"Subject: failure notice", b"Subject: Fwd: look")
    assert parse(forwarded) == [], "a reader forwarding our issue is not a bounce"


def test_a_plain_delay_warning_is_a_delay():
    qmail = (SAMPLES / "qmail_plain.eml").read_bytes()
    [report] = parse(qmail.replace(b"Subject: failure notice", b"Subject: Warning: message delayed 24 hours")
                     .replace(b"550 5.1.1", b"451 4.2.2"))
    assert (report.kind, report.bounce_type) == ("delayed", None)


# -- hostile and broken input ---------------------------------------------------------------------

ORIGINAL = (b"Message-ID: <orig-1@newsletter.example.com>\r\nFrom: digest@newsletter.example.com\r\n"
            b"To: a@example.com\r\nSubject: hi\r\n\r\nbody\r\n")


def dsn(original: bytes, recipient: str, status: str | None, diagnostic: str | None, *,
        message_id: str | None = "<dsn-1@mx.example>", status_type: str = "message/delivery-status",
        address_type: str = "rfc822") -> bytes:
    """A delivery status notification about `original`, failed for `recipient`."""
    fields = [f"Final-Recipient: {address_type}; {recipient}", "Action: failed"]
    fields += [f"Status: {status}"] if status else []
    fields += [f"Diagnostic-Code: {diagnostic}"] if diagnostic else []
    head = f"Message-ID: {message_id}\r\n" if message_id else ""
    return (f"{head}From: MAILER-DAEMON@mx.example\r\nTo: digest@newsletter.example.com\r\n"
            "Subject: Undelivered Mail Returned to Sender\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
            "--B\r\nContent-Type: text/plain\r\n\r\nIt failed.\r\n"
            f"--B\r\nContent-Type: {status_type}\r\n\r\nReporting-MTA: dns; mx.example\r\n\r\n"
            + "\r\n".join(fields) + "\r\n\r\n"
            "--B\r\nContent-Type: message/rfc822\r\n\r\n").encode() + original + b"\r\n--B--\r\n"


def nested(depth: int) -> bytes:
    head = b"".join(b'Content-Type: multipart/mixed; boundary="n%d"\r\n\r\n--n%d\r\n' % (i, i)
                    for i in range(depth))
    tail = b"".join(b"\r\n--n%d--" % i for i in reversed(range(depth)))
    return b"From: MAILER-DAEMON@x.example\r\nSubject: Undeliverable\r\n" + head + \
        b"Content-Type: text/plain\r\n\r\nhi" + tail + b"\r\n"


HOSTILE = {
    "empty": b"",
    "binary": bytes(range(256)) * 64,
    "huge header": b"Subject: " + b"A" * 3_000_000 + b"\r\nFrom: MAILER-DAEMON@x.example\r\n\r\nbody",
    "many headers": b"".join(b"X-H%d: v\r\n" % i for i in range(100_000)) + b"\r\nbody",
    "unknown charset": (SAMPLES / "qmail_plain.eml").read_bytes().replace(
        b"Subject: failure notice", b"Subject: failure notice\nContent-Type: text/plain; charset=x-klingon"),
    "bad bytes in fields": dsn(ORIGINAL, "a\xff\xfe@example.com", "5.1.1", "smtp; 550 \xff\xfe").replace(
        b"\xc3\xbf\xc3\xbe", b"\xff\xfe"),
    "8-bit headers": b"From: \xff\xfe@\xff\r\nSubject: Undeliverable \xe9\r\nReturn-Path: <>\r\n\r\n\xff" * 3,
    "nested 2000 deep": nested(2000),
    "nested report in report": dsn(dsn(dsn(ORIGINAL, "x@example.com", "5.1.1", None), "y@example.com",
                                       "5.1.1", None), "z@example.com", "5.1.1", None),
    "report without parts": b'Content-Type: multipart/report; report-type=delivery-status; boundary="Q"\r\n\r\n',
    "feedback without fields": b'Content-Type: multipart/report; report-type=feedback-report; boundary="Q"\r\n'
                               b'\r\n--Q\r\nContent-Type: message/feedback-report\r\n\r\n--Q--\r\n',
    "bad dates": dsn(ORIGINAL, "a@example.com", "5.1.1", None).replace(
        b"Reporting-MTA: dns; mx.example", b"Reporting-MTA: dns; mx.example\r\nArrival-Date: Mon, 99 Foo 99999"),
    "huge status part": dsn(ORIGINAL, "a@example.com", "5.1.1", "smtp; 550 " + "x" * 2_000_000),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_input_never_raises(name):
    started = time.monotonic()
    reports = parse(HOSTILE[name])
    assert isinstance(reports, list)
    assert time.monotonic() - started < 20, "no input takes the parser long"
    for report in reports:
        assert report.occurred_at is None or report.occurred_at.tzinfo is not None


def test_hostile_input_that_is_still_a_report_is_read_as_one():
    [nested_report] = parse(HOSTILE["nested report in report"])
    assert nested_report.recipient == "z@example.com", "the report about a report is the outer one"
    [bad_bytes] = parse(HOSTILE["bad bytes in fields"])
    assert bad_bytes.recipient is not None and "\ufffd" in bad_bytes.recipient
    [late] = parse(HOSTILE["bad dates"])
    assert late.occurred_at is None and late.bounce_type == "permanent"


def test_an_email_our_own_code_built_is_no_report():
    mail = EmailMessage()
    mail["From"], mail["To"], mail["Subject"] = "a@example.com", "b@example.com", "Delivery failure 5.1.1"
    mail.set_content("b@example.com said 550 5.1.1 but there is no returned message")
    assert parse(mail.as_bytes()) == []
