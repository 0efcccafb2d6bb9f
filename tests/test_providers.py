"""The outbox and SMTP providers: real RFC 5322 messages, read back with the email package."""

from __future__ import annotations

import email
import smtplib
import socket
from email import policy

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from newsletter.errors import Rejected, Unavailable
from newsletter.ledger import Recipient
from newsletter.providers import Message, mime
from newsletter.providers.outbox import OutboxProvider
from newsletter.providers.smtp import SmtpProvider
from newsletter.send import Composer, render_variants

from .test_mime import headers, parse, parts

HEADERS = {"List-Unsubscribe": "<https://n.example/u/tok>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
           "List-Id": "Test Weekly <test-weekly.n.example>"}


def message(to: str, n: int = 1) -> Message:
    return Message(key=f"r1-{n}", to=to, sender="Test Weekly <news@n.example>", reply_to="ed@n.example",
                   subject="Ünïcode subject · issue 7", html="<p>Hello <b>reader</b> · café</p>",
                   text="Hello reader · café", headers=HEADERS, tags={"issue": "x"})


def check_parsed(raw: bytes, to: str) -> None:
    mail = email.message_from_bytes(raw, policy=policy.default)
    assert mail["From"] == "Test Weekly <news@n.example>" and mail["To"] == to
    assert mail["Reply-To"] == "ed@n.example"
    assert mail["Subject"] == "Ünïcode subject · issue 7"
    for name, value in HEADERS.items():
        assert mail[name] == value
    assert mail["Message-ID"] and mail["Date"]
    assert mail.get_content_type() == "multipart/alternative"
    assert mail.get_body(("plain",)).get_content().strip() == "Hello reader · café"
    assert mail.get_body(("html",)).get_content().strip() == "<p>Hello <b>reader</b> · café</p>"


@pytest.fixture(scope="module")
def composed(session_settings, renderer, example):
    """Messages as a send makes them: the example digest's variants, each with its template."""
    variants = render_variants(renderer, example, ["all", "ai-tech"])
    composer = Composer(session_settings, example.slug, variants, view_key=b"k" * 32)
    readers = [("ana@example.com", "all"), ("josé@exämple.org", "ai-tech"), ("bo@example.com", "ai-tech")]
    return [composer.message(f"r3-{n}", Recipient(n, to, None, f"tok{n}" * 8, variant))
            for n, (to, variant) in enumerate(readers)]


@pytest.fixture
def no_generator(monkeypatch):
    """Fail any message written by the email package's generator rather than from its template."""
    def generated(message):
        raise AssertionError(f"{message.key} was written by the email package, not from its template")

    monkeypatch.setattr(mime, "_generated", generated)
    return monkeypatch


def check_as_before(raw: bytes, message: Message) -> None:
    """`raw` is the email the outbox and SMTP sent before templates: `to_mime(message)`."""
    got, expected = parse(raw), parse(mime.to_mime(message).as_bytes())
    assert headers(got) == headers(expected)
    assert parts(got) == parts(expected)


def test_outbox_writes_a_send_from_the_variants_templates(tmp_path, composed, no_generator):
    outbox = OutboxProvider(tmp_path / "outbox")
    outcomes = outbox.send(composed, "k").outcomes
    no_generator.undo()
    assert len(list((tmp_path / "outbox").glob("*.eml"))) == 3
    for message, outcome in zip(composed, outcomes):
        raw = outbox.path_for(message).read_bytes()
        check_as_before(raw, message)
        assert outcome.ok and outcome.message_id == parse(raw)["Message-ID"].strip()


def test_outbox_writes_parseable_eml_files(tmp_path):
    outbox = OutboxProvider(tmp_path / "outbox")
    result = outbox.send([message("ana@example.com", 1), message("josé@exämple.org", 2)], "k")
    assert [o.ok for o in result.outcomes] == [True, True]
    files = sorted((tmp_path / "outbox").glob("*.eml"))
    assert [f.name.rpartition("-")[0] for f in files] == ["r1-1-ana@example.com", "r1-2-josé@exämple.org"]
    check_parsed(files[0].read_bytes(), "ana@example.com")
    check_parsed(files[1].read_bytes(), "josé@exämple.org")
    outbox.send([message("ana@example.com", 1)], "k")  # the same message again: the same file
    assert len(list((tmp_path / "outbox").glob("*.eml"))) == 2


def outbox_files(root):
    """Every file under `root`, as paths relative to it."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_outbox_names_stay_in_the_folder_short_and_unique(tmp_path):
    outbox = OutboxProvider(tmp_path / "box" / "outbox")
    long = "l" * 64 + "@" + "d" * 63 + "." + "e" * 63 + "." + "f" * 57 + ".com"  # 254: the longest valid
    tricky = ["a/b@example.com", "a_b@example.com", "x/../../../escape@example.com", "../../up@example.com",
              "nul\x00byte@example.com", "back\\slash@example.com", "ü" * 64 + "@" + "ä" * 60 + ".org", long]
    messages = [message(to, n) for n, to in enumerate(tricky)] + [message(long, 99), message("a_b@example.com", 0)]
    assert all(o.ok for o in outbox.send(messages, "k").outcomes)
    names = outbox_files(tmp_path)
    assert len(names) == len(messages), "one file per (message, address), even where they look alike"
    assert all(name.startswith("box/outbox/") and name.count("/") == 2 for name in names), names
    assert all(len(name.rpartition("/")[2].encode()) <= 150 for name in names)
    assert any(name.startswith("box/outbox/r1-1-a_b@example.com-") for name in names), "readable"
    assert any(name.startswith(f"box/outbox/r1-7-{'l' * 64}@ddd") for name in names), "readable"
    outbox.send(messages, "k")  # sent again (a resume): the same files
    assert outbox_files(tmp_path) == names


class Collector:
    def __init__(self):
        self.messages = []
        self.envelopes = []  # (MAIL FROM, RCPT TOs, MAIL options) of each message taken

    async def handle_MAIL(self, server, session, envelope, address, options):  # noqa: N802
        if address.startswith("banned@"):
            return "550 5.7.1 sender rejected"
        if address.startswith("busy@"):
            return "451 4.7.1 too many messages, slow down"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, options):  # noqa: N802
        if address.startswith("nobody@"):
            return "550 5.1.1 no such user"
        if address.startswith("later@"):
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        self.messages.append((envelope.rcpt_tos[0], envelope.content))
        options = sorted(o for o in envelope.mail_options if not o.startswith("SIZE="))  # each message's own
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos), options))
        return "250 Message accepted"


@pytest.fixture(params=[True])
def smtp_server(request):
    collector = Collector()
    accounts = {"news": "secret"}

    def authenticate(server, session, envelope, mechanism, auth_data):
        ok = accounts.get(auth_data.login.decode()) == auth_data.password.decode()
        return AuthResult(success=ok, handled=False)

    with socket.socket() as probe:  # aiosmtpd checks its own port once started: it needs a real one
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(collector, hostname="127.0.0.1", port=port, authenticator=authenticate,
                            auth_require_tls=False, enable_SMTPUTF8=request.param)
    controller.start()
    yield collector, port
    controller.stop()


def test_smtp_sends_a_batch_on_one_connection(smtp_server):
    collector, port = smtp_server
    smtp = SmtpProvider("127.0.0.1", port, security="none", username="news", password="secret")
    batch = [message("ana@example.com", 1), message("nobody@example.com", 2), message("later@example.com", 3),
             message("bo@example.com", 4)]
    outcomes = smtp.send(batch, "k").outcomes
    assert [o.ok for o in outcomes] == [True, False, False, True]
    assert outcomes[1].retry is False and outcomes[1].error.startswith("550")
    assert outcomes[2].retry is True and outcomes[2].error.startswith("451")
    assert [to for to, _ in collector.messages] == ["ana@example.com", "bo@example.com"]
    check_parsed(collector.messages[0][1], "ana@example.com")


def test_smtp_sends_a_send_from_the_variants_templates_as_send_message_did(smtp_server, composed, no_generator):
    collector, port = smtp_server
    outcomes = SmtpProvider("127.0.0.1", port, security="none").send(composed, "k").outcomes
    no_generator.undo()
    assert [o.ok for o in outcomes] == [True, True, True]
    with smtplib.SMTP("127.0.0.1", port) as server:  # the same messages as they were sent before
        for message in composed:
            server.send_message(mime.to_mime(message))
    sent, before = collector.envelopes[:3], collector.envelopes[3:]
    assert sent == before
    assert sent[0] == ("digest@newsletter.example.com", ["ana@example.com"], [])
    assert sent[1] == ("digest@newsletter.example.com", ["josé@exämple.org"], ["BODY=8BITMIME", "SMTPUTF8"])
    for message, outcome, (_, raw) in zip(composed, outcomes, collector.messages):
        check_as_before(raw, message)
        assert outcome.message_id == parse(raw)["Message-ID"].strip()


def test_smtp_bad_login_and_no_server(smtp_server):
    collector, port = smtp_server
    with pytest.raises(Rejected, match="SMTP login to 127.0.0.1 refused"):
        SmtpProvider("127.0.0.1", port, security="none", username="news", password="wrong").send(
            [message("ana@example.com")], "k")
    with pytest.raises(Unavailable, match="cannot connect to SMTP server"):
        SmtpProvider("127.0.0.1", 1, security="none", timeout=2).send([message("ana@example.com")], "k")
    assert collector.messages == []


def test_smtp_refused_sender_stops_the_batch(smtp_server):
    collector, port = smtp_server
    for sender, pause, trouble in (("banned@n.example", True, False), ("busy@n.example", False, True)):
        smtp = SmtpProvider("127.0.0.1", port, security="none")
        batch = [message("ana@example.com", 1), message("bo@example.com", 2)]
        for m in batch:
            m.sender = sender
        result = smtp.send(batch, "k")
        assert bool(result.pause) is pause and bool(result.trouble) is trouble
        assert [(o.ok, o.retry, o.tried) for o in result.outcomes] == [(False, True, False)] * 2
    assert collector.messages == []


@pytest.mark.parametrize("smtp_server", [False], indirect=True)
def test_smtp_without_smtputf8_fails_only_the_international_address(smtp_server, composed):
    collector, port = smtp_server
    smtp = SmtpProvider("127.0.0.1", port, security="none")
    outcomes = smtp.send([message("ana@example.com", 1), message("jörg@exämple.org", 2),
                          message("bo@example.com", 3)], "k").outcomes
    assert [o.ok for o in outcomes] == [True, False, True]
    assert outcomes[1].retry is False
    assert [to for to, _ in collector.messages] == ["ana@example.com", "bo@example.com"]
    outcomes = smtp.send(composed, "k").outcomes  # the same from templates: josé's address is international
    assert [o.ok for o in outcomes] == [True, False, True]
    assert "SMTPUTF8" in outcomes[1].error and outcomes[1].retry is False


# -- Resend: the request body -------------------------------------------------------------------

HOSTILE = ['"quoted" \\ back\\slash </script> & <b>', "tab\tnew\nline\r\x00\x1f\x7f", "café · 日本 · 🧪 · \u2028\u2029",
           "", "%%", "%unsubscribe_url%", "\ud7ff\ue000\uffff"]


@pytest.mark.parametrize("html", [True, False])
def test_a_variant_written_as_json_is_what_orjson_writes_for_the_whole(html):
    """A reader's part goes into the request body from the variant's literals, JSON-encoded once:
    the bytes must be exactly those of encoding the filled-in text, or a batch sent again would
    not be the same request. Placeholders at the edges, side by side, and around every
    character JSON escapes; links with characters HTML and JSON both escape."""
    import random

    import orjson

    from newsletter.links import PLACEHOLDERS, Personal

    rng = random.Random(5)
    marks = list(PLACEHOLDERS.values())
    values = [{"unsubscribe_url": 'https://n.example/u/"tok"&<x>', "preferences_url": "https://n.example/p/ü\\",
               "browser_url": ""},
              {"unsubscribe_url": "https://n.example/u/t", "preferences_url": "é\n", "browser_url": "🧪"}]
    for _ in range(200):
        pieces = [rng.choice(HOSTILE + marks) for _ in range(rng.randint(0, 9))]
        personal = Personal("".join(pieces), html=html)
        for links in values:
            assert personal.json(links) == orjson.dumps(personal.fill(links))


def test_a_resend_request_body_holds_each_readers_own_email(composed):
    """What the SDK hands the HTTP client: every reader's html and text as their message has it."""
    import orjson

    from newsletter.providers.resend import _dumps, _params

    body = orjson.loads(_dumps([_params(m) for m in composed]))
    assert [(e["to"], e["html"], e["text"]) for e in body] == [([m.to], m.html, m.text) for m in composed]
    plain = message("ana@example.com")  # not from a template: written as it is
    assert orjson.loads(_dumps([_params(plain)]))[0]["html"] == plain.html
