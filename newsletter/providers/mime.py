"""A `Message` as a real RFC 5322 multipart/alternative email, for the outbox and SMTP.

Two ways to the same email. `to_mime` builds an `EmailMessage` and lets the email package write
it: about 7 ms a reader, most of it quoted-printable encoding 70 KB of HTML. A `Template`
encodes a variant's message once and writes each reader's links and headers into the encoded
bytes: tens of microseconds. `encode` takes the template when the message carries one; the
tests hold the two ways to the same parsed email.
"""

from __future__ import annotations

import binascii
import re
import time
from dataclasses import dataclass
from email import policy as email_policy
from email.headerregistry import HeaderRegistry, UnstructuredHeader
from email.message import EmailMessage
from email.utils import formatdate, getaddresses, make_msgid
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # a Message carries a Template: importing it here would be a cycle
    from ..render import Personal
    from . import Message

QP_LINE = 76  # the longest line of quoted-printable (RFC 2045), its soft-break `=` included
MAX_LINE = 998  # the longest line of an email (RFC 5322), CRLF not counted
SOFT_BREAK = b"=\r\n"
PRINTABLE = re.compile(r"[!-~]*")  # ASCII without spaces or controls: all but `=` stays itself in QP
QP_UNSAFE = re.compile(r"[^!-<>-~]")  # what quoted-printable escapes in a value (spaces too)
SIMPLE_ADDRESS = re.compile(r"[A-Za-z0-9_%+-]+(\.[A-Za-z0-9_%+-]+)*@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*")
SIMPLE_MESSAGE_ID = re.compile(r"<[0-9.]+[A-Za-z0-9_.-]*@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*>")
BODY_MARKS = (b"XTEXTPARTX\r\n", b"XHTMLPARTX\r\n")  # where the skeleton's parts go
CACHED_HEADERS = 1024  # folded header lines a template keeps (From, Subject, List-Id, ...)


class OneLineHeader(UnstructuredHeader):
    """A header written as it is, on one line: `List-Unsubscribe: <https://...>`.

    The email package would RFC 2047-encode a link too long for a 78-character line, and mail
    clients do not decode that back into a link: one-click unsubscribe would stop working."""

    def fold(self, *, policy) -> str:
        if not (str(self).isascii() or policy.utf8):
            return super().fold(policy=policy)  # a non-ASCII link must be encoded without SMTPUTF8
        return one_line(self.name, str(self), policy.linesep)


def one_line(name: str, value: str, linesep: str = "\r\n") -> str:
    """`name: value` and the line end; a ValueError if no email line can hold it."""
    if "\n" in value or "\r" in value:  # as the email package refuses them: no header injection
        raise ValueError("Header values may not contain linefeed or carriage return characters")
    line = f"{name}: {value}"
    if len(line.encode()) > MAX_LINE:
        raise ValueError(f"the {name} header would be {len(line.encode()):,} characters long, and a line "
                         f"of email holds at most {MAX_LINE} (is base_url that long?)")
    return line + linesep


_registry = HeaderRegistry()
_registry.map_to_type("list-unsubscribe", OneLineHeader)
# The email package encodes a body in lines of the policy's length, 78 by default: 76 keeps its
# quoted-printable within RFC 2045 (headers fold at 76 too, which RFC 5322 allows).
SMTP = email_policy.SMTP.clone(header_factory=_registry, max_line_length=QP_LINE)
SMTPUTF8 = email_policy.SMTPUTF8.clone(header_factory=_registry, max_line_length=QP_LINE)


@dataclass
class Encoded:
    """A message as the bytes to write or send, and the envelope smtplib's `send_message`
    would take from its headers."""

    data: bytes
    message_id: str
    envelope_from: str
    envelope_to: list[str]
    international: bool  # an address is not ASCII: SMTPUTF8 headers, sent with the SMTPUTF8 option


def addresses(name: str, value: str) -> list[str]:
    """The addresses of a From or To header, as `smtplib.SMTP.send_message` reads them."""
    return [a[1] for a in getaddresses([str(SMTP.header_store_parse(name, value)[1])])]


def is_international(envelope_from: str, envelope_to: list[str]) -> bool:
    """As smtplib decides: only the addresses, not the names (names are RFC 2047-encoded)."""
    return not "".join([envelope_from, *envelope_to]).isascii()


def domain_of(sender: str) -> str:
    return addresses("From", sender)[0].rpartition("@")[2] or "localhost"


def to_mime(message: Message) -> EmailMessage:
    """The message built by the email package: for messages without a template (a signup's
    confirmation, the scheduler's reports, test copies), and the reference templates are held to."""
    envelope_from, envelope_to = addresses("From", message.sender)[0], addresses("To", message.to)
    mail = EmailMessage(policy=SMTPUTF8 if is_international(envelope_from, envelope_to) else SMTP)
    mail["Message-ID"] = make_msgid(idstring=message.key, domain=domain_of(message.sender))
    mail["Date"] = formatdate(localtime=False, usegmt=True)
    mail["From"] = message.sender
    mail["To"] = message.to
    if message.reply_to:
        mail["Reply-To"] = message.reply_to
    mail["Subject"] = message.subject
    for name, value in message.headers.items():
        mail[name] = value
    mail.set_content(message.text, cte="quoted-printable")
    mail.add_alternative(message.html, subtype="html", cte="quoted-printable")
    return mail


def encode(message: Message) -> Encoded:
    """The message's bytes and envelope: from its variant's template when it has one."""
    if message.template is not None:
        return message.template.encode(message)
    return _generated(message)


def _generated(message: Message) -> Encoded:
    mail = to_mime(message)
    envelope_from, envelope_to = addresses("From", message.sender)[0], addresses("To", message.to)
    return Encoded(mail.as_bytes(), mail["Message-ID"], envelope_from, envelope_to,
                   international=mail.policy.utf8)


def _fold_exact(name: str, value: str, policy) -> bytes:
    """A header line exactly as the email package writes it."""
    return policy.fold_binary(name, policy.header_store_parse(name, value)[1])


class Template:
    """One variant's message encoded once, with holes where each reader's values go.

    The parts are quoted-printable encoded here, not by the email package, so that a link never
    lands in the middle of an encoded line: each literal stretch of a part is encoded on its own,
    a reader's link is encoded and folded from the column where the stretch before it ends, and a
    soft line break after it lets the next stretch start at column 0, as it was encoded."""

    def __init__(self, html: Personal, text: Personal):
        self.html, self.text = html, text
        self._chunks: list[bytes] | None = None  # encoded on first use: literal bytes around the holes
        self._columns: list[int] = []  # per hole, text part first: the column its value starts at
        self._lines: dict[tuple[bool, str, str], bytes] = {}  # (utf8, name, value) -> folded line
        self._senders: dict[str, tuple[str, str]] = {}  # From -> (envelope address, Message-ID domain)
        self._date: tuple[int, bytes] = (-1, b"")

    def encode(self, message: Message) -> Encoded:
        """`message` (whose html and text are this template's parts filled with `message.links`)."""
        chunks = self._chunks if self._chunks is not None else self._encode_body()
        values = [*self.text.values(message.links), *self.html.values(message.links)]
        if not all(values) or any("\n" in v or "\r" in v for v in values):
            return _generated(message)  # these would move the part's line ends: the email package knows how
        envelope_from, domain = self._sender(message.sender)
        simple_to = len("To: ") + len(message.to) <= QP_LINE and SIMPLE_ADDRESS.fullmatch(message.to)
        envelope_to = [message.to] if simple_to else addresses("To", message.to)
        international = is_international(envelope_from, envelope_to)
        policy = SMTPUTF8 if international else SMTP
        message_id = make_msgid(idstring=message.key, domain=domain)
        out = [self._message_id_line(message_id, policy), self._date_line(), self._line("From", message.sender, policy),
               b"To: %b\r\n" % message.to.encode() if simple_to else _fold_exact("To", message.to, policy)]
        if message.reply_to:
            out.append(self._line("Reply-To", message.reply_to, policy))
        out.append(self._line("Subject", message.subject, policy))
        for name, value in message.headers.items():
            # As OneLineHeader writes it; the email package would decode an `=?` in it first.
            if name.lower() == "list-unsubscribe" and (value.isascii() or policy.utf8) and "=?" not in value:
                out.append(one_line(name, value).encode())
            else:
                out.append(self._line(name, value, policy))
        out.append(chunks[0])
        for value, column, chunk in zip(values, self._columns, chunks[1:]):
            out.append(_fold(_qp_value(value), column)[0])
            out.append(chunk)
        return Encoded(b"".join(out), message_id, envelope_from, envelope_to, international)

    def _sender(self, sender: str) -> tuple[str, str]:
        known = self._senders.get(sender)
        if known is None:
            known = self._senders[sender] = (addresses("From", sender)[0], domain_of(sender))
        return known

    def _line(self, name: str, value: str, policy) -> bytes:
        """A header line the email package folded, kept: most are the same for every reader."""
        key = (policy.utf8, name, value)
        line = self._lines.get(key)
        if line is None:
            line = _fold_exact(name, value, policy)
            if len(self._lines) < CACHED_HEADERS:
                self._lines[key] = line
        return line

    @staticmethod
    def _message_id_line(message_id: str, policy) -> bytes:
        # As the email package folds a plain one: on the header's line if it fits, else on the next.
        if len(" ") + len(message_id) <= QP_LINE and SIMPLE_MESSAGE_ID.fullmatch(message_id):
            fits = len("Message-ID: ") + len(message_id) <= QP_LINE
            return (b"Message-ID: " if fits else b"Message-ID:\r\n ") + message_id.encode() + b"\r\n"
        return _fold_exact("Message-ID", message_id, policy)

    def _date_line(self) -> bytes:
        now = int(time.time())
        if self._date[0] != now:  # the email package's own line, once a second
            self._date = (now, _fold_exact("Date", formatdate(now, localtime=False, usegmt=True), SMTP))
        return self._date[1]

    def _encode_body(self) -> list[bytes]:
        """The multipart skeleton the email package writes, with each part encoded around its holes."""
        skeleton = EmailMessage(policy=SMTP)
        skeleton.set_content(BODY_MARKS[0][:-2].decode(), cte="quoted-printable")
        skeleton.add_alternative(BODY_MARKS[1][:-2].decode(), subtype="html", cte="quoted-printable")
        head, rest = skeleton.as_bytes().split(BODY_MARKS[0])
        middle, tail = rest.split(BODY_MARKS[1])
        chunks, columns = [head], []
        for personal, after in ((self.text, middle), (self.html, tail)):
            literals = [p.encode().replace(b"\r\n", b"\n").replace(b"\r", b"\n") for p in personal.parts[::2]]
            if not literals[-1].endswith(b"\n"):  # as the email package ends a text part
                literals[-1] += b"\n"
            for n, literal in enumerate(literals):
                last = n == len(literals) - 1
                encoded, column = _encode_literal(literal, value_follows=not last)
                if n and not literal.startswith(b"\n"):
                    encoded = SOFT_BREAK + encoded  # the link before ends its line
                chunks[-1] += encoded
                if not last:
                    columns.append(column)
                    chunks.append(b"")
            chunks[-1] += after
        self._columns, self._chunks = columns, chunks
        return chunks


def _encode_literal(data: bytes, *, value_follows: bool) -> tuple[bytes, int]:
    """`data` in quoted-printable from column 0, CRLF line ends, no line longer than 76 (75 for
    the last when a value follows); and the column where it ends."""
    # binascii's encoder is fast but lets a line reach 78 when it ends in an encoded space.
    lines = binascii.b2a_qp(data).split(b"\n")
    for n, line in enumerate(lines):
        limit = QP_LINE - 1 if value_follows and n == len(lines) - 1 else QP_LINE
        if len(line) > limit:
            soft = line.endswith(b"=")
            folded, _ = _fold(line[:-1] if soft else line, 0)
            lines[n] = folded + b"=" if soft else folded
    encoded = b"\r\n".join(lines)
    return encoded, len(encoded) - encoded.rfind(b"\n") - 1


def _qp_value(value: str) -> bytes:
    """A reader's value in quoted-printable, not yet folded: a link is itself, with `=` as `=3D`."""
    if PRINTABLE.fullmatch(value):
        return value.replace("=", "=3D").encode()
    return QP_UNSAFE.sub(lambda m: "".join(f"={b:02X}" for b in m.group().encode()), value).encode()


def _fold(encoded: bytes, column: int) -> tuple[bytes, int]:
    """Quoted-printable `encoded` (no line breaks) written from `column` (at most 75), with soft
    line breaks so that no line passes 76 and room is left for one more `=`; and the column
    where it ends. An escape (`=XX`) is never cut."""
    room = QP_LINE - 1 - column
    if len(encoded) <= room:
        return encoded, column + len(encoded)
    lines, start = [], 0
    while len(encoded) - start > room:
        cut = start + room
        if cut - 1 >= start and encoded[cut - 1] == 0x3D:  # `=`: an escape starts at cut - 1
            cut -= 1
        elif cut - 2 >= start and encoded[cut - 2] == 0x3D:
            cut -= 2
        lines.append(encoded[start:cut])
        start, room = cut, QP_LINE - 1
    lines.append(encoded[start:])
    return SOFT_BREAK.join(lines), len(lines[-1])
