"""Bounce and complaint messages, as a mailbox receives them for mail sent over SMTP, made `Report`s.

`parse(raw)` understands three kinds of message:

- a delivery status notification (RFC 3464, `multipart/report; report-type=delivery-status`):
  one report per recipient that failed (bounced: permanent for a 5.x.x status, transient for
  4.x.x) or is delayed; recipients delivered, relayed or expanded are no news;
- a feedback report (ARF, RFC 5965, `report-type=feedback-report`): a complaint;
- the plain-text bounces some servers still send (qmail, Exim, an old Exchange's "Undeliverable:"),
  only where it is reliable: the returned message (attached, or copied below a marker line) has
  one recipient, and the text before it names that address beside a status code.

Each report names the email it is about by the Message-ID of the returned message, written as
our providers store it (`<...@...>`, as `mail["Message-ID"]` gives it), and its recipient. A
report's id is the report message's own Message-ID and the recipient (one report can name
several), or a hash of the raw message when it has no Message-ID. Mail in a bounce mailbox comes
from anyone: `parse` never raises, and what it cannot read for sure is not a report (`[]`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re
from email.message import Message
from email.parser import BytesParser, HeaderParser
from email.policy import compat32
from email.utils import collapse_rfc2231_value, getaddresses, parseaddr, parsedate_to_datetime

from .reports import Report

log = logging.getLogger("newsletter.bounces")

SOURCE = "mailbox"
MAX_TEXT = 256 * 1024  # characters of a plain-text bounce looked at: the notice and the copy's headers
MAX_PARTS = 200  # parts looked at in one message: a report has three or four
STATUS_PARTS = ("message/delivery-status", "message/global-delivery-status")
RETURNED_PARTS = ("message/rfc822", "message/global", "text/rfc822-headers", "message/rfc822-headers",
                  "message/global-headers")
COMPLAINTS = ("abuse", "fraud", "virus", "other")  # not auth-failure (DMARC) nor not-spam
STATUS_RE = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
REPLY_RE = re.compile(r"(?im)(?:^\s*|said:\s*|smtp;\s*|error[^:\n]{0,80}:\s*)([45][0-5]\d)[ -]")
MESSAGE_ID_RE = re.compile(r"<([^<>\s]{1,250})>")
# A plain-text bounce: sent with an empty return path, by a mailer daemon, or so titled.
BOUNCE_SENDER_RE = re.compile(r"^(?:mailer-daemon|mail-daemon|mailerdaemon|postmaster)@", re.I)
BOUNCE_SUBJECT_RE = re.compile(
    r"undeliver|delivery (?:status notification|failure|has failed|failed)|failure notice|returned mail"
    r"|mail delivery failed|could not be delivered|unzustellbar|non remis|non recapitabile", re.I)
DELAY_SUBJECT_RE = re.compile(r"delay|warning|still being retried|could not send message for past", re.I)
# The line above the returned message in a plain-text bounce (qmail, Exim, sendmail).
COPY_MARKER_RE = re.compile(
    r"(?im)^[ \t]*-{2,}[ \t]*(?:below this line is a copy of the message|enclosed are the original headers"
    r"|this is a copy of the message, including all the headers|original message follows).*$")

CLASSES = {"2": "success", "4": "transient failure", "5": "permanent failure"}
# RFC 3463's enhanced status codes, subject.detail: what each means.
MEANINGS = dict(line.split(" ", 1) for line in """\
0.0 other or undefined status
1.0 other address status
1.1 bad destination mailbox address
1.2 bad destination system address
1.3 bad destination mailbox address syntax
1.4 destination mailbox address ambiguous
1.5 destination address valid
1.6 destination mailbox has moved, no forwarding address
1.7 bad sender's mailbox address syntax
1.8 bad sender's system address
2.0 other or undefined mailbox status
2.1 mailbox disabled, not accepting messages
2.2 mailbox full
2.3 message length exceeds administrative limit
2.4 mailing list expansion problem
3.0 other or undefined mail system status
3.1 mail system full
3.2 system not accepting network messages
3.3 system not capable of selected features
3.4 message too big for system
3.5 system incorrectly configured
4.0 other or undefined network or routing status
4.1 no answer from host
4.2 bad connection
4.3 directory server failure
4.4 unable to route
4.5 mail system congestion
4.6 routing loop detected
4.7 delivery time expired
5.0 other or undefined protocol status
5.1 invalid command
5.2 syntax error
5.3 too many recipients
5.4 invalid command arguments
5.5 wrong protocol version
6.0 other or undefined media error
6.1 media not supported
6.2 conversion required and prohibited
6.3 conversion required but not supported
6.4 conversion with loss performed
6.5 conversion failed
7.0 other or undefined security status
7.1 delivery not authorized, message refused
7.2 mailing list expansion prohibited
7.3 security conversion required but not possible
7.4 security features not supported
7.5 cryptographic failure
7.6 cryptographic algorithm not supported
7.7 message integrity failure""".splitlines())


def parse(raw: bytes) -> list[Report]:
    """The reports in one raw email message; [] for one that is not a report, or is broken."""
    try:
        mail = BytesParser(policy=compat32).parsebytes(raw)
        reports = _reports(mail, raw)
    except Exception as e:  # noqa: BLE001 - hostile input: whatever breaks the parser is no report
        log.info("not read as a report: %s: %s", type(e).__name__, str(e)[:200])
        return []
    return reports


def _reports(mail: Message, raw: bytes) -> list[Report]:
    report = next((p for p in _parts(mail, depth=2) if p.get_content_type() == "multipart/report"), None)
    if report is None:
        return _plain_bounce(mail, raw)
    kind = _text(collapse_rfc2231_value(report.get_param("report-type", ""))).lower()
    if kind == "delivery-status":
        return _delivery_status(mail, report, raw)
    if kind == "feedback-report":
        return _feedback(mail, report, raw)
    return []


# -- delivery status notifications (RFC 3464) -----------------------------------------------------

def _delivery_status(mail: Message, report: Message, raw: bytes) -> list[Report]:
    status_part = _child(report, STATUS_PARTS)
    if status_part is None:
        return []
    blocks = _status_blocks(status_part)
    per_message = blocks[0] if blocks and not _is_recipient_block(blocks[0]) else {}
    message_id = _message_id(_header(_returned(report), "Message-ID"))
    reports = []
    for fields in (b for b in blocks if _is_recipient_block(b)):
        action = fields.get("action", "").split(" ")[0].lower()
        recipient = _address(fields.get("final-recipient") or fields.get("original-recipient"))
        if action not in ("failed", "delayed") or recipient is None:
            continue  # delivered, relayed, expanded: no news; no recipient: nothing to go by
        diagnostic = _typed_value(fields.get("diagnostic-code"))
        status = _status(fields.get("status")) or _status(diagnostic)
        reply = _reply_code(diagnostic)
        kind, bounce_type = "delayed", None
        if action == "failed":
            kind = "bounced"
            first = status[0] if status else reply[0] if reply else None
            bounce_type = {"5": "permanent", "4": "transient"}.get(first, "undetermined")
        when = fields.get("last-attempt-date") or per_message.get("arrival-date") or _header(mail, "Date")
        reports.append(Report(
            source=SOURCE, report_id=_report_id(mail, raw, recipient), kind=kind, message_id=message_id,
            occurred_at=_date(when), bounce_type=bounce_type,
            detail=diagnostic or (_meaning(status) if status else None), recipient=recipient))
    return reports


def _is_recipient_block(fields: dict[str, str]) -> bool:
    return "final-recipient" in fields or "original-recipient" in fields or "action" in fields


def _status_blocks(part: Message) -> list[dict[str, str]]:
    """The groups of fields of a delivery-status part: the per-message one, then one per recipient.

    The standard library splits `message/delivery-status` into one message per group; a
    `message/global-delivery-status` (RFC 6533) comes as one message whose body holds the rest."""
    payload = part.get_payload()
    if isinstance(payload, str):
        return _field_blocks(payload)
    blocks = []
    for group in payload[:MAX_PARTS]:
        if not isinstance(group, Message):
            continue
        fields = {name.lower(): _text(value) for name, value in group.items()}
        if fields:
            blocks.append(fields)
        body = group.get_payload()
        if isinstance(body, str) and body.strip():
            blocks += _field_blocks(body)
    return blocks


def _field_blocks(text: str) -> list[dict[str, str]]:
    """`Name: value` lines (a line starting with a space continues the last), in blank-line groups."""
    blocks: list[dict[str, str]] = [{}]
    name = None
    for line in text[:MAX_TEXT].splitlines():
        if not line.strip():
            if blocks[-1]:
                blocks.append({})
            name = None
        elif line[0] in " \t" and name:
            blocks[-1][name] += " " + line.strip()
        elif ":" in line:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            blocks[-1][name] = value.strip()
    return [b for b in blocks if b]


# -- complaints (ARF, RFC 5965) -------------------------------------------------------------------

def _feedback(mail: Message, report: Message, raw: bytes) -> list[Report]:
    part = _child(report, ("message/feedback-report",))
    if part is None:
        return []
    blocks = _status_blocks(part)
    fields = {k: v for block in reversed(blocks) for k, v in block.items()}
    feedback_type = fields.get("feedback-type", "").split(" ")[0].lower()
    if feedback_type not in COMPLAINTS:
        return []
    returned = _returned(report)
    recipient = _address(fields.get("original-rcpt-to")) or _single_address(_header(returned, "To"))
    agent = fields.get("user-agent")
    return [Report(
        source=SOURCE, report_id=_report_id(mail, raw, recipient), kind="complained",
        message_id=_message_id(_header(returned, "Message-ID")),
        occurred_at=_date(fields.get("arrival-date") or fields.get("received-date") or _header(mail, "Date")),
        detail=f"{feedback_type} ({agent})" if agent else feedback_type, recipient=recipient)]


# -- plain-text bounces -------------------------------------------------------------------------

def _plain_bounce(mail: Message, raw: bytes) -> list[Report]:
    sender = parseaddr(_header(mail, "From") or "")[1]
    subject = _header(mail, "Subject") or ""
    if not (_header(mail, "Return-Path") == "<>" or BOUNCE_SENDER_RE.match(sender)
            or BOUNCE_SUBJECT_RE.search(subject)):
        return []
    text = _plain_text(mail)
    returned = _returned(mail)
    marker = COPY_MARKER_RE.search(text)
    if marker is not None:
        if returned is None:
            returned = HeaderParser(policy=compat32).parsestr(text[marker.end():].lstrip("\r\n"))
        text = text[:marker.start()]  # the copy's own To: line names the reader too: not evidence
    recipient = _single_address(_header(returned, "To"))
    if recipient is None:
        return []
    at = text.lower().find(recipient.lower())
    if at < 0:
        return []
    near = text[at:at + 1500]
    status, reply = STATUS_RE.search(near), REPLY_RE.search(near)
    found = status or reply
    if found is None:
        return []
    first = found.group(1)[0]
    line = near[near.rfind("\n", 0, found.start()) + 1:].split("\n", 1)[0].strip()
    delayed = bool(DELAY_SUBJECT_RE.search(subject))
    return [Report(
        source=SOURCE, report_id=_report_id(mail, raw, recipient), kind="delayed" if delayed else "bounced",
        message_id=_message_id(_header(returned, "Message-ID")), occurred_at=_date(_header(mail, "Date")),
        bounce_type=None if delayed else {"5": "permanent", "4": "transient"}.get(first, "undetermined"),
        detail=line[:500] or found.group(0).strip(), recipient=recipient)]


def _plain_text(mail: Message) -> str:
    """The first text/plain part (the notice), decoded."""
    part = next((p for p in _parts(mail, depth=3) if p.get_content_type() == "text/plain"), None)
    if part is None:
        return ""
    data = part.get_payload(decode=True) or b""
    charset = _text(part.get_content_charset() or "utf-8")
    try:
        return data[:MAX_TEXT].decode(charset, errors="replace")
    except LookupError:  # a charset Python does not know
        return data[:MAX_TEXT].decode("utf-8", errors="replace")


# -- the parts and fields of a message ------------------------------------------------------------

def _parts(mail: Message, depth: int) -> list[Message]:
    """`mail` and its parts down to `depth` levels of multipart, never inside a returned message
    (a bounce may return a bounce), and at most MAX_PARTS of them: hostile nesting is not followed."""
    found, level = [], [mail]
    for _ in range(depth + 1):
        found += level
        if len(found) >= MAX_PARTS:
            return found[:MAX_PARTS]
        level = [child for part in level if part.is_multipart() and part.get_content_maintype() == "multipart"
                 for child in part.get_payload()[:MAX_PARTS] if isinstance(child, Message)]
    return found


def _child(report: Message, types: tuple[str, ...]) -> Message | None:
    return next((p for p in _parts(report, depth=1) if p.get_content_type() in types), None)


def _returned(report: Message) -> Message | None:
    """The returned message (or only its headers), as a message whose headers can be read."""
    part = next((p for p in _parts(report, depth=2) if p.get_content_type() in RETURNED_PARTS), None)
    if part is None:
        return None
    payload = part.get_payload()
    if isinstance(payload, list):
        return payload[0] if payload and isinstance(payload[0], Message) else None
    data = part.get_payload(decode=True) or b""
    return HeaderParser(policy=compat32).parsestr(data[:MAX_TEXT].decode("utf-8", errors="replace"))


def _header(mail: Message | None, name: str) -> str | None:
    value = mail.get(name) if mail is not None else None
    return _text(value) if value is not None else None


def _text(value) -> str:
    """A header or field value as one line of text; undecodable bytes become U+FFFD."""
    text = value if isinstance(value, str) else str(value)
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return " ".join(text.split())


def _typed_value(value: str | None) -> str | None:
    """`smtp; 550 5.1.1 ...` without its type (`smtp;`, `X-Postfix;`, `rfc822;`)."""
    if not value:
        return None
    kind, sep, rest = value.partition(";")
    if sep and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.+-]*", kind.strip()):
        value = rest
    return value.strip() or None


def _address(value: str | None) -> str | None:
    """The address of a recipient field (`rfc822; reader@example.com`), if it is one."""
    value = _typed_value(value)
    if value is None:
        return None
    value = re.sub(r"\\x\{([0-9A-Fa-f]{1,6})\}", lambda m: chr(min(int(m.group(1), 16), 0x10FFFF)), value)
    address = parseaddr(value)[1] or value.strip("<> ")
    if "@" not in address or len(address) > 320 or any(c.isspace() or c in "<>,;" for c in address):
        return None
    return address


def _single_address(value: str | None) -> str | None:
    """The address of a To: that names exactly one."""
    if not value:
        return None
    addresses = [a for _, a in getaddresses([value]) if a]
    return _address(addresses[0]) if len(addresses) == 1 else None


def _message_id(value: str | None) -> str | None:
    """A Message-ID as our providers store it: `<id@host>`, angle brackets included."""
    if not value:
        return None
    match = MESSAGE_ID_RE.search(value)
    if match:
        return f"<{match.group(1)}>"
    value = value.strip()
    return f"<{value}>" if "@" in value and not any(c.isspace() for c in value) and len(value) < 250 else None


def _status(value: str | None) -> tuple[str, str, str] | None:
    match = STATUS_RE.search(value or "")
    return match.groups() if match else None


def _reply_code(value: str | None) -> str | None:
    match = REPLY_RE.search(value or "")
    return match.group(1) if match else None


def _meaning(status: tuple[str, str, str]) -> str:
    """`5.1.1 (permanent failure: bad destination mailbox address)`."""
    cls, subject, detail = status
    meaning = MEANINGS.get(f"{subject}.{detail}") or MEANINGS.get(f"{subject}.0")
    return f"{cls}.{subject}.{detail} ({CLASSES[cls]}{': ' + meaning if meaning else ''})"


def _report_id(mail: Message, raw: bytes, recipient: str | None) -> str:
    """The report message's Message-ID (else a hash of it) and the recipient, at most 200 characters."""
    own = _message_id(_header(mail, "Message-ID")) or "sha256:" + hashlib.sha256(raw).hexdigest()
    key = f"{own} {recipient or ''}".strip()
    return key if len(key) <= 200 else "sha256:" + hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()


def _date(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        moment = parsedate_to_datetime(value)
    except Exception:  # noqa: BLE001 - any date a stranger writes
        return None
    if moment is None or not 1990 <= moment.year <= 9000:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.timezone.utc)
