"""Messages for the outbox and SMTP: a variant's template filled in for a reader is the email the
email package builds for that reader (`to_mime`), in valid quoted-printable."""

from __future__ import annotations

import email
import random
import re
from email import policy
from email.utils import parsedate_to_datetime

import pytest

from newsletter.errors import SendError
from newsletter.ledger import Recipient
from newsletter.providers import Message
from newsletter.providers.mime import SMTP, SMTPUTF8, Template, encode, to_mime
from newsletter.render import PLACEHOLDERS, Personal
from newsletter.send import Composer, possible_variants, prepare, render_variants

SENDER = "Test Weekly <news@n.example>"
HEADERS = {"List-Unsubscribe-Post": "List-Unsubscribe=One-Click", "List-Id": "Test Weekly <test-weekly.n.example>"}
READERS = ["reader@example.com", "first.last+news@mail.example.co.uk", "josé@exämple.org", "用户@例子.广告",
           '"quoted local"@example.com', "a" * 62 + "@example.com", "l" * 64 + "@" + "d" * 40 + ".example"]
MESSAGE_ID = re.compile(r"<[^<>@\s]+@[^<>@\s]+>")
QP_ESCAPE = re.compile(r"=(?![0-9A-F]{2})")  # an `=` that starts no escape


@pytest.fixture(scope="module")
def variants(renderer, example):
    return render_variants(renderer, example, possible_variants(example))


def parse(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(raw, policy=policy.default)


def headers(mail) -> list[tuple[str, str]]:
    """Every header, decoded, but the ones that differ in every message."""
    return [(name, re.sub(r'boundary="[^"]+"', "boundary=B", value)) for name, value in mail.items()
            if name not in ("Message-ID", "Date")]


def parts(mail) -> list[tuple]:
    return [(p.get_content_type(), p.get_content_charset(), p["Content-Transfer-Encoding"],
             None if p.is_multipart() else p.get_content()) for p in mail.walk()]


def raw_headers(raw: bytes) -> dict[str, bytes]:
    """Each header's bytes as written, folding and all."""
    block = raw[:raw.index(b"\r\n\r\n") + 2]
    lines = re.findall(rb"[^\s][^\r]*\r\n(?:[ \t][^\r]*\r\n)*", block)
    return {line.split(b":", 1)[0].decode(): line for line in lines}


def check_well_formed(raw: bytes) -> email.message.EmailMessage:
    """Lines of at most 998 characters, each ending in CRLF; quoted-printable parts in lines of at
    most 76, no trailing white space, every `=` an escape or a soft line break. The parsed email."""
    assert b"\n" not in raw.replace(b"\r\n", b"") and b"\r" not in raw.replace(b"\r\n", b"")
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    for part in email.message_from_bytes(raw).walk():  # the raw parts, without decoding any header
        if part.is_multipart():
            continue
        assert part["Content-Transfer-Encoding"] == "quoted-printable"
        for line in part.get_payload().split("\r\n"):
            assert len(line) <= 76, line
            assert not line.endswith((" ", "\t")), line
            assert not QP_ESCAPE.search(line[:-1] if line.endswith("=") else line), line
    return parse(raw)


def check_same(message: Message, n: int = 3) -> list[bytes]:
    """`n` encodings of `message` from its template: each the email `to_mime` builds, well formed,
    with a Message-ID of its own and a Date."""
    reference = check_well_formed(to_mime(message).as_bytes())
    raws = [encode(message).data for _ in range(n)]
    for raw in raws:
        mail = check_well_formed(raw)
        assert headers(mail) == headers(reference)
        assert parts(mail) == parts(reference)
        assert MESSAGE_ID.fullmatch(mail["Message-ID"].strip())
        assert parsedate_to_datetime(mail["Date"]).tzinfo is not None
    assert len({parse(raw)["Message-ID"].strip() for raw in raws}) == n
    return raws


def templated(html: str, text: str, links: dict[str, str], *, to: str = "reader@example.com", key: str = "r1-1",
              template: Template | None = None, **fields) -> Message:
    """A message as the Composer makes one: the template's parts filled with `links`."""
    html_part, text_part = Personal(html, html=True), Personal(text)
    fields = {"sender": SENDER, "subject": "Issue 7", "reply_to": "ed@n.example",
              "headers": {"List-Unsubscribe": f"<{links['unsubscribe_url']}>", **HEADERS}} | fields
    return Message(key=key, to=to, html=html_part.fill(links), text=text_part.fill(links), links=links,
                   template=template or Template(html_part, text_part), **fields)


def composer_message(settings, example, variants, to: str, variant: str = "all", token: str = "t" * 32):
    composer = Composer(settings, example.slug, variants, view_key=b"k" * 32)
    return composer.message("r7-42", Recipient(42, to, "A Reader", token, variant))


def test_every_variant_of_the_example_is_the_email_package_s_email(session_settings, example, variants):
    composer = Composer(session_settings, example.slug, variants, view_key=b"k" * 32)
    for n, key in enumerate(variants):
        message = composer.message(f"r7-{n}", Recipient(n, READERS[n % 3], None, "tok" * 11, key))
        raw = check_same(message, n=2)[0]
        mail = parse(raw)  # what the reader sees is the variant with their links
        for kind, sent in (("html", message.html), ("plain", message.text)):
            assert mail.get_body((kind,)).get_content().replace("\r\n", "\n").rstrip("\n") == sent.rstrip("\n")
        assert f"{session_settings.base_url}/u/{'tok' * 11}" in mail.get_body(("html",)).get_content()


@pytest.mark.parametrize("to", READERS)
def test_names_subjects_and_addresses_in_any_script(session_settings, example, variants, to):
    settings = session_settings.with_overrides(sender="Zoë's Ünïcode Weekly <news@n.example>",
                                               reply_to="Zoë Ång <zoe@n.example>")
    message = composer_message(settings, example, variants, to)
    message.subject = "Ünïcode · issue 7 — “open” weights, 開放 " + "long " * 20
    raw = check_same(message)[0]
    reference = to_mime(message).as_bytes()
    expected, got = raw_headers(reference), raw_headers(raw)
    for name in ("From", "To", "Reply-To", "Subject", "List-Unsubscribe", "List-Unsubscribe-Post", "List-Id"):
        assert got[name] == expected[name], name  # encoded exactly as the email package encodes them
    international = not to.isascii()
    utf8 = SMTPUTF8 if international else SMTP
    for name in ("Message-ID", "Date"):  # the email package's folding of the same value
        value = parse(raw)[name].strip()
        assert got[name] == utf8.fold_binary(name, utf8.header_store_parse(name, value)[1])
    assert raw.isascii() is not international  # only an international address gets 8-bit headers
    assert encode(message).international is international
    assert parse(raw)["To"] == to


@pytest.mark.parametrize("key", ["r1-1", "r12345-67890123", "test-0123456789ab-17", "k" * 30, "k" * 80])
def test_message_ids_fold_as_the_email_package_folds_them(key):
    links = {"unsubscribe_url": "https://n.example/u/x", "preferences_url": "https://n.example/p/x",
             "browser_url": "https://n.example/issues/x"}
    message = templated("<p>%%unsubscribe_url%%</p>", "%%unsubscribe_url%%", links, key=key)
    for _ in range(20):  # the random part of an id changes its length, and so where it folds
        raw = encode(message).data
        line = raw_headers(raw)["Message-ID"]
        value = parse(raw)["Message-ID"].strip()
        assert value.endswith(f".{key}@n.example>")
        assert line == SMTP.fold_binary("Message-ID", SMTP.header_store_parse("Message-ID", value)[1])


def test_links_with_equals_signs_ampersands_and_any_length(session_settings):
    links = {"unsubscribe_url": "https://n.example/u/a=b&c=d&e==f",
             "preferences_url": "https://n.example/p/" + "x=y&" * 120,
             "browser_url": "https://n.example/issues/über?v=1&w=ä"}
    html = ('<p style="margin:0">Unsubscribe: <a href="%%unsubscribe_url%%">here</a> or change '
            '<a href="%%preferences_url%%">your preferences</a></p>\n<p>View: %%browser_url%%</p>\n')
    text = "Unsubscribe: %%unsubscribe_url%%\nPreferences: %%preferences_url%%\nOn the web: %%browser_url%%\n"
    message = templated(html, text, links)
    raw = check_same(message)[0]
    mail = parse(raw)
    assert 'href="https://n.example/u/a=b&amp;c=d&amp;e==f"' in mail.get_body(("html",)).get_content()
    assert "Preferences: " + links["preferences_url"] in mail.get_body(("plain",)).get_content()
    assert b"a=3Db&c=3Dd&e=3D=3Df" in raw.replace(b"=\r\n", b"")


def random_text(rng: random.Random) -> str:
    """Text of every kind a part can hold, with placeholders anywhere on a line."""
    pieces = ["word ", "a", " ", "  ", "\t", "=", "==", "é", "·", "€", "😀", ".", "\n", "\n", "\r\n", "\r",
              "\n.\n", "x" * 73, "y" * 74, "z" * 75, "-" * 76, "w" * 77, " \n", "=\n", "&", '"']
    placeholders = list(PLACEHOLDERS.values())
    return "".join(rng.choice(placeholders) if rng.random() < 0.25 else rng.choice(pieces)
                   for _ in range(rng.randint(0, 40)))


def random_links(rng: random.Random) -> dict[str, str]:
    return {"unsubscribe_url": rng.choice(["https://n.example/u/" + "t" * rng.randint(0, 90),
                                           "https://n.example/u/a=b&c", "", "=" * rng.randint(1, 30)]),
            "preferences_url": "https://n.example/p/" + rng.choice("p=&é") * rng.randint(0, 200),
            "browser_url": rng.choice(["https://n.example/issues/x?v=abc", "https://n.example/über",
                                       "https://n.example/line\nbreak", "https://n.example/cr\r"])}


def test_placeholders_anywhere_in_any_text():
    """Links at every column, next to each other, at the start and the end, beside spaces, `=`,
    multi-byte characters and lines that already fill 76 columns; two readers per template."""
    rng = random.Random(7)
    for case in range(120):
        html, text = random_text(rng), random_text(rng)
        template = Template(Personal(html, html=True), Personal(text))
        for reader in range(2):
            message = templated(html, text, random_links(rng), key=f"r1-{case}-{reader}", template=template)
            mail, reference = check_well_formed(encode(message).data), check_well_formed(to_mime(message).as_bytes())
            assert parts(mail) == parts(reference), (case, html, text)


@pytest.mark.parametrize("to", ["reader@example.com", "josé@exämple.org"])
def test_list_unsubscribe_stays_a_plain_link_with_a_long_base_url(session_settings, example, variants, to):
    base = "https://newsletter.example.com/" + "a-rather-long-path/" * 6 + "mail"
    settings = session_settings.with_overrides(base_url=base)
    message = composer_message(settings, example, variants, to)
    link = f"<{base}/u/{'t' * 32}>"
    for raw in (to_mime(message).as_bytes(), encode(message).data):  # both ways, the same one line
        assert raw_headers(raw)["List-Unsubscribe"] == f"List-Unsubscribe: {link}\r\n".encode()
        assert parse(raw)["List-Unsubscribe"] == link
    check_same(message)


@pytest.mark.parametrize("to", ["reader@example.com", "josé@exämple.org"])
def test_list_unsubscribe_is_an_ascii_link_for_a_base_url_in_any_script(session_settings, example, variants, to):
    """A header carries a URI, not an IRI (RFC 2369, 8058): an internationalized base_url goes
    into List-Unsubscribe as the address a browser makes of it, IDNA host and percent-encoded
    path, never RFC 2047-encoded (mail clients would not read that back as a link)."""
    settings = session_settings.with_overrides(base_url="https://bücher-exämple.org/über")
    message = composer_message(settings, example, variants, to)
    link = f"<https://xn--bcher-exmple-ncb24a.org/%C3%BCber/u/{'t' * 32}>"  # as the idna package writes it
    assert message.headers["List-Unsubscribe"] == link
    for raw in (to_mime(message).as_bytes(), encode(message).data):
        assert raw_headers(raw)["List-Unsubscribe"] == f"List-Unsubscribe: {link}\r\n".encode()
    assert "https://bücher-exämple.org/über/u/" in message.html, "the email's own link stays as written"
    check_same(message)


def test_a_base_url_too_long_for_a_header_line_is_refused_before_the_send(session_settings, renderer, example):
    settings = session_settings.with_overrides(base_url="https://newsletter.example.com/" + "p" * 1000)
    with pytest.raises(SendError, match="List-Unsubscribe header would be 1,0.. characters long"):
        prepare(renderer, example, settings, ["all"])


def test_a_sender_name_in_any_script_keeps_an_ascii_message_ascii(session_settings, example, variants):
    """Only addresses make a message international (as smtplib decides): a name is RFC 2047-encoded."""
    settings = session_settings.with_overrides(sender="Åsa Öberg <news@n.example>")
    message = composer_message(settings, example, variants, "reader@example.com")
    encoded = encode(message)
    for raw in (to_mime(message).as_bytes(), encoded.data):
        assert raw.isascii() and b"From: =?utf-8?q?=C3=85sa_=C3=96berg?= <news@n.example>\r\n" in raw
        assert parse(raw)["From"] == "Åsa Öberg <news@n.example>"
    assert encoded.international is False and encoded.envelope_from == "news@n.example"


def test_a_line_break_in_a_header_is_refused_both_ways():
    links = {"unsubscribe_url": "https://n.example/u/x\r\nBcc: everyone@example.com",
             "preferences_url": "https://n.example/p/x", "browser_url": "https://n.example/issues/x"}
    message = templated("<p>%%preferences_url%%</p>", "%%preferences_url%%", links)
    for build in (to_mime, encode):
        with pytest.raises(ValueError, match="linefeed or carriage return"):
            build(message)
