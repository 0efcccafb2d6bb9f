"""The bounce mailbox: where bounces and complaints about mail sent over SMTP arrive, read over IMAP.

`fetch_reports` reads every message in `bounce_imap_folder`, a few at a time, stores the reports
each holds (`bounces.parse`, then `Reports.record`, which stops readers who bounce or complain)
and then moves it to `bounce_imap_done_folder`, created if missing; a message that is no report
is moved there too, and counted. Stored first, moved second: a crash in between leaves the
message where it was, so the next fetch reads it again, and since a report is stored once per
report id, reading it twice changes nothing. Moved first, a crash would lose the report.

The password comes only from $NEWSLETTER_BOUNCE_PASSWORD. Every failure is a `MailboxError` of
one line naming the server and the folder, never the password.
"""

from __future__ import annotations

import base64
import contextlib
import imaplib
import logging
import os
import re
import ssl
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from sqlalchemy.engine import Engine

from . import bounces
from .config import Settings
from .errors import MailboxError
from .reports import Reports
from .subscribers import Status

log = logging.getLogger("newsletter.mailbox")

PASSWORD_VAR = "NEWSLETTER_BOUNCE_PASSWORD"
CHUNK = 25  # messages fetched, stored and moved together
# Of each message, the first MiB is read: a report's own parts and the returned message's headers
# come first, so a bounce that returns a large attachment costs no more than that.
MAX_BYTES = 1 << 20
UID_RE = re.compile(rb"\bUID (\d+)")
STOPPING = (Status.BOUNCED, Status.COMPLAINED)  # what a report can make a reader


@dataclass
class Fetched:
    """What one fetch did: messages read, reports stored, reports seen before, readers stopped
    (bounced or complained), and messages that held no report."""

    read: int = 0
    stored: int = 0
    duplicates: int = 0
    stopped: int = 0
    not_reports: int = 0

    def __str__(self) -> str:
        def n(count: int, one: str, many: str) -> str:
            return f"{count} {one if count == 1 else many}"

        return (f"{n(self.read, 'message', 'messages')} read: {n(self.stored, 'report', 'reports')} stored, "
                f"{self.duplicates} seen before, {n(self.stopped, 'reader', 'readers')} stopped, "
                f"{self.not_reports} not {'a report' if self.not_reports == 1 else 'reports'}")


def check_configured(settings: Settings, env: Mapping[str, str] | None = None) -> str:
    """The mailbox's password, once the settings name a mailbox to read; else a MailboxError
    saying what to set."""
    env = os.environ if env is None else env
    if not settings.bounce_imap_host:
        raise MailboxError("no bounce mailbox is configured: set bounce_imap_host and bounce_imap_user "
                           "in newsletter.toml (or $NEWSLETTER_BOUNCE_IMAP_HOST and "
                           f"$NEWSLETTER_BOUNCE_IMAP_USER), and the password in ${PASSWORD_VAR}")
    where = f"bounce mailbox {settings.bounce_imap_host}"
    if not settings.bounce_imap_user:
        raise MailboxError(f"{where}: set bounce_imap_user (or $NEWSLETTER_BOUNCE_IMAP_USER)",
                           host=settings.bounce_imap_host)
    if not env.get(PASSWORD_VAR):
        raise MailboxError(f"{where}: set the password in ${PASSWORD_VAR}", host=settings.bounce_imap_host)
    if settings.bounce_imap_folder == settings.bounce_imap_done_folder:
        raise MailboxError(f"{where}: bounce_imap_done_folder must differ from bounce_imap_folder "
                           f"({settings.bounce_imap_folder!r})", host=settings.bounce_imap_host,
                           folder=settings.bounce_imap_folder)
    return env[PASSWORD_VAR]


def fetch_reports(settings: Settings, engine: Engine, env: Mapping[str, str] | None = None) -> Fetched:
    """Read the bounce mailbox once: store every report, then move each message to the done folder."""
    password = check_configured(settings, env)
    reports = Reports(engine, soft_bounce_limit=settings.soft_bounce_limit)
    fetched = Fetched()
    with Mailbox(settings, password) as box:
        for chunk in box.chunks():
            for uid, raw in chunk:
                fetched.read += 1
                found = bounces.parse(raw)
                if not found:
                    fetched.not_reports += 1
                    log.info("message %d in %s is not a report: moved to %s", uid, box.folder, box.done)
                for report in found:
                    recorded = reports.record(report)
                    if recorded.stored:
                        fetched.stored += 1
                    else:
                        fetched.duplicates += 1
                    if recorded.new_status in STOPPING:
                        fetched.stopped += 1
            box.move([uid for uid, _ in chunk])  # only now: every report of these messages is stored
    return fetched


class Mailbox:
    """One IMAP session with the bounce mailbox: logged in, the done folder made, the folder
    selected. Each failure is a MailboxError naming server, user and folder."""

    def __init__(self, settings: Settings, password: str):
        self.host, self.port = settings.bounce_imap_host or "", settings.bounce_imap_port
        self.user = settings.bounce_imap_user or ""
        self.folder, self.done = settings.bounce_imap_folder, settings.bounce_imap_done_folder
        self.security, self.timeout = settings.bounce_imap_security, settings.request_timeout
        self.password = password
        self.imap: imaplib.IMAP4 | None = None
        self.capabilities: frozenset[str] = frozenset()
        self.count = 0  # messages in the folder when selected

    def __enter__(self) -> "Mailbox":
        self.imap = self._connect()
        try:
            with self._talking("login refused"):
                self.imap.login(self.user, self.password)
            with self._talking("no capabilities"):
                caps = self._ok(self.imap.capability(), "no capabilities")
            self.capabilities = frozenset(_text(caps[-1]).upper().split())
            self._make_done_folder()
            with self._talking("folder not selected"):
                typ, data = self.imap.select(_folder(self.folder))
            if typ != "OK":
                raise self.error(f"the folder is missing ({_said(data)})")
            self.count = int(data[0]) if data and data[0] and data[0].isdigit() else 0
        except BaseException:
            self._close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._close()

    def error(self, what: str) -> MailboxError:
        return MailboxError(f"bounce mailbox {self.host}:{self.port} (user {self.user}, folder "
                            f"{self.folder!r}): {what}", host=self.host, folder=self.folder)

    def chunks(self) -> Iterator[list[tuple[int, bytes]]]:
        """The folder's messages as (uid, raw bytes), CHUNK at a time: those there when selected."""
        if not self.count:
            return
        with self._talking("cannot list the messages"):
            data = self._ok(self.imap.fetch("1:*", "(UID)"), "cannot list the messages")
        found = (UID_RE.search(item) for item in data if isinstance(item, bytes))
        uids = sorted({int(match.group(1)) for match in found if match})
        for start in range(0, len(uids), CHUNK):
            yield self.fetch(uids[start:start + CHUNK])

    def fetch(self, uids: list[int]) -> list[tuple[int, bytes]]:
        with self._talking("cannot fetch messages"):
            data = self._ok(self.imap.uid("FETCH", _uid_set(uids), f"(UID BODY.PEEK[]<0.{MAX_BYTES}>)"),
                            "cannot fetch messages")
        messages = []
        for i, item in enumerate(data):
            if not isinstance(item, tuple):
                continue
            head, raw = item
            # The UID comes before the message, or (as some servers order it) after.
            after = data[i + 1] if i + 1 < len(data) and isinstance(data[i + 1], bytes) else b""
            match = UID_RE.search(head) or UID_RE.search(after)
            if match is not None:
                messages.append((int(match.group(1)), raw))
        return messages

    def move(self, uids: list[int]) -> None:
        """Move messages to the done folder: MOVE where the server has it, else copy, delete, expunge."""
        if not uids:
            return
        what = f"cannot move messages to {self.done!r}"
        uid_set, done = _uid_set(uids), _folder(self.done)
        with self._talking(what):
            if "MOVE" in self.capabilities:
                self._ok(self.imap.uid("MOVE", uid_set, done), what)
                return
            self._ok(self.imap.uid("COPY", uid_set, done), what)
            self._ok(self.imap.uid("STORE", uid_set, "+FLAGS.SILENT", r"(\Deleted)"), what)
            # UID EXPUNGE removes only these; a plain EXPUNGE, all that anyone marked deleted.
            self._ok(self.imap.uid("EXPUNGE", uid_set) if "UIDPLUS" in self.capabilities
                     else self.imap.expunge(), what)

    # -- the session ---------------------------------------------------------------------------

    def _connect(self) -> imaplib.IMAP4:
        context = ssl.create_default_context()
        imap = None
        try:
            if self.security == "ssl":
                return imaplib.IMAP4_SSL(self.host, self.port, ssl_context=context, timeout=self.timeout)
            imap = imaplib.IMAP4(self.host, self.port, timeout=self.timeout)
            if self.security == "starttls":
                imap.starttls(ssl_context=context)
            return imap
        except ssl.SSLCertVerificationError as e:
            _shutdown(imap)
            raise self.error(f"the server's certificate is not trusted ({e.verify_message})") from None
        except (OSError, imaplib.IMAP4.error) as e:
            _shutdown(imap)
            raise self.error(f"cannot connect ({_said(e)}; bounce_imap_security is {self.security})") from None

    def _make_done_folder(self) -> None:
        name = _folder(self.done)
        with self._talking(f"cannot create folder {self.done!r}"):
            typ, data = self.imap.list('""', name)
            if typ == "OK" and any(data):
                return
            typ, data = self.imap.create(name)
        if typ != "OK" and "ALREADYEXISTS" not in _said(data).upper():
            raise self.error(f"cannot create folder {self.done!r} ({_said(data)})")
        log.info("created folder %r in the bounce mailbox", self.done)

    def _ok(self, response: tuple, what: str) -> list:
        typ, data = response
        if typ != "OK":
            raise self.error(f"{what} ({_said(data)})")
        return data

    @contextlib.contextmanager
    def _talking(self, what: str) -> Iterator[None]:
        """Turn what imaplib and the socket raise into a MailboxError saying `what` failed."""
        try:
            yield
        except (imaplib.IMAP4.abort, OSError) as e:  # abort: the server hung up or sent garbage
            raise self.error(f"the connection was lost ({_said(e)})") from None
        except imaplib.IMAP4.error as e:
            raise self.error(f"{what} ({_said(e)})") from None
        except UnicodeEncodeError:  # imaplib sends LOGIN's arguments as ASCII; never show them
            raise self.error(f"{what} (the user name and password must be ASCII)") from None

    def _close(self) -> None:
        if self.imap is None:
            return
        try:
            self.imap.logout()
        except (OSError, imaplib.IMAP4.error):
            _shutdown(self.imap)
        self.imap = None


def _shutdown(imap: imaplib.IMAP4 | None) -> None:
    if imap is not None:
        try:
            imap.shutdown()
        except OSError:
            pass


def _said(value) -> str:
    """What the server (or the socket) said, as one line of text."""
    if isinstance(value, BaseException):
        value = value.args[0] if len(value.args) == 1 else str(value) or type(value).__name__
    if isinstance(value, list):
        value = b" ".join(v for v in value if isinstance(v, bytes)) or ""
    return " ".join(_text(value).split())[:300] or "no reason given"


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _uid_set(uids: list[int]) -> str:
    return ",".join(str(uid) for uid in uids)


def _folder(name: str) -> str:
    """A folder name as IMAP takes it: modified UTF-7 (RFC 3501 5.1.3), in quotes."""
    encoded, pending = [], []

    def flush() -> None:
        if pending:
            data = "".join(pending).encode("utf-16-be")
            encoded.append("&" + base64.b64encode(data).decode().rstrip("=").replace("/", ",") + "-")
            pending.clear()

    for char in name:
        if " " <= char <= "~":
            flush()
            encoded.append("&-" if char == "&" else char)
        else:
            pending.append(char)
    flush()
    return '"' + "".join(encoded).replace("\\", "\\\\").replace('"', '\\"') + '"'
