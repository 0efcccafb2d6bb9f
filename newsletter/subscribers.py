"""Readers and what they want to read: statuses, addresses, consent, and the operations on them.

A reader becomes a row only through `new_reader_row`, whether added one at a time or imported.
Every status change goes through `transition`, which refuses impossible transitions. Only `active`
readers are ever sent to.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import datetime as dt
import enum
import functools
import hashlib
import hmac
import ipaddress
import json
import re
import secrets
import threading
import unicodedata
import weakref
from dataclasses import dataclass
from typing import IO, Callable, Collection, Iterable, Iterator

import sqlalchemy as sa
from email_validator import EmailNotValidError, validate_email
from email_validator.rfc_constants import DOT_ATOM_TEXT
from sqlalchemy.engine import Connection, Engine

from .config import UNSAFE_CHARACTERS, Category, Settings, load_secret_key
from .errors import ConfigError, SubscriberError
from .store import (categories, deliveries, events, open_engine, reader_categories, readers,
                    suppressions, utcnow)


class Status(str, enum.Enum):
    PENDING = "pending"  # awaiting double opt-in
    ACTIVE = "active"
    UNSUBSCRIBED = "unsubscribed"
    BOUNCED = "bounced"
    COMPLAINED = "complained"


# Where a reader may go from each status. Leaving `unsubscribed`, `bounced` or `complained`
# needs the reader's own new consent: back to `pending` (double opt-in) or, confirmed, `active`.
TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.PENDING: frozenset({Status.ACTIVE, Status.UNSUBSCRIBED, Status.BOUNCED, Status.COMPLAINED}),
    Status.ACTIVE: frozenset({Status.UNSUBSCRIBED, Status.BOUNCED, Status.COMPLAINED}),
    Status.UNSUBSCRIBED: frozenset({Status.PENDING, Status.ACTIVE}),
    Status.BOUNCED: frozenset({Status.PENDING, Status.ACTIVE}),
    Status.COMPLAINED: frozenset({Status.PENDING}),
}
STOPPED = frozenset({Status.UNSUBSCRIBED, Status.BOUNCED, Status.COMPLAINED})


def transition(old: Status, new: Status, now: dt.datetime) -> dict:
    """The column values for moving a reader from `old` to `new`; the one place that says whether
    a status change is possible (raises SubscriberError if not)."""
    if new not in TRANSITIONS[old]:
        raise SubscriberError(f"is {old.value} and cannot become {new.value}")
    return _status_columns(new, now)


def _status_columns(status: Status, now: dt.datetime, confirmed_at: dt.datetime | None = None) -> dict:
    """What entering `status` sets: when, and the confirmation or unsubscription it stands for."""
    values = {"status": status.value, "status_changed_at": now}
    if status == Status.ACTIVE:
        values["confirmed_at"] = confirmed_at or now
    if status == Status.UNSUBSCRIBED:
        values["unsubscribed_at"] = now
    return values


class ConsentMethod(str, enum.Enum):
    FORM = "form"
    IMPORT = "import"
    CLI = "cli"


@dataclass(frozen=True)
class Consent:
    method: ConsentMethod
    source: str | None = None  # the imported file, the form's page, ...
    ip: str | None = None
    at: dt.datetime | None = None  # None: now


@dataclass
class Reader:
    id: int
    email: str
    name: str | None
    status: Status
    token: str
    categories: tuple[str, ...]
    created_at: dt.datetime
    status_changed_at: dt.datetime
    confirmed_at: dt.datetime | None = None
    unsubscribed_at: dt.datetime | None = None
    consent_at: dt.datetime | None = None
    consent_method: str | None = None
    consent_ip: str | None = None
    consent_source: str | None = None

    def as_row(self) -> dict:
        return {"email": self.email, "name": self.name or "", "status": self.status.value,
                "categories": ",".join(self.categories),
                **{k: _iso(getattr(self, k)) for k in ("created_at", "confirmed_at", "unsubscribed_at",
                                                       "consent_at")},
                "consent_method": self.consent_method or "", "consent_ip": self.consent_ip or "",
                "consent_source": self.consent_source or ""}


EXPORT_COLUMNS = ["email", "name", "status", "categories", "created_at", "confirmed_at",
                  "unsubscribed_at", "consent_at", "consent_method", "consent_ip", "consent_source"]
# A cell starting with one of these is run as a formula by Excel, LibreOffice or Google Sheets
# (=HYPERLINK(...) can send the sheet's data anywhere): OWASP's "CSV injection".
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _iso(value) -> str:
    return value.isoformat(timespec="seconds") if value is not None else ""


def spreadsheet_safe(value: str) -> str:
    """`value` as a CSV cell that no spreadsheet runs: a leading ' where a formula would start."""
    return "'" + value if value.startswith(FORMULA_STARTS) else value


def write_csv(out: IO[str], readers: Iterable[Reader], *, raw: bool = False) -> int:
    """Write readers as CSV, cells made spreadsheet-safe unless `raw`; returns how many."""
    writer = csv.DictWriter(out, fieldnames=EXPORT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    count = 0
    for reader in readers:
        row = reader.as_row()
        writer.writerow(row if raw else {k: spreadsheet_safe(v) for k, v in row.items()})
        count += 1
    return count


# -- a new reader -------------------------------------------------------------------------------

def new_reader_row(email: str, *, name: str | None, status: Status, consent: Consent,
                   now: dt.datetime) -> dict:
    """The columns of a new reader (`email` already normalized): the one place that says how a
    reader becomes a row, for `Subscribers.add` and imports alike."""
    consented = consent.at or now
    return {"email": email, "name": clean_name(name), "token": new_token(), "created_at": now,
            "confirmed_at": None, "unsubscribed_at": None,
            **_status_columns(status, now, confirmed_at=consented), **consent_columns(consent, now)}


def consent_columns(consent: Consent, now: dt.datetime) -> dict:
    """The consent record a reader's row keeps: when, how, from where."""
    return {"consent_at": consent.at or now, "consent_method": consent.method.value,
            "consent_ip": normalize_ip(consent.ip),
            "consent_source": consent.source[:300] if consent.source else None}


NAME_LENGTH = 200  # what the database holds
WHITESPACE_CONTROLS = re.compile("\r\n|[\t\n\v\f\r\x85\u2028\u2029]")


def clean_name(name: str | None) -> str | None:
    """A name as stored: no control or text-direction characters (line breaks and tabs become
    spaces), trimmed, at most NAME_LENGTH characters; None if nothing is left."""
    if not name:
        return None
    if not name.isprintable():  # rare: only then the slower clean-up
        name = UNSAFE_CHARACTERS.sub("", WHITESPACE_CONTROLS.sub(" ", name))
    return name.strip()[:NAME_LENGTH].strip() or None


IPV4_RE = re.compile(r"(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}")


def normalize_ip(text: str | None) -> str | None:
    """An IP address in its standard form, or None if it is not one (it is only a record)."""
    text = (text or "").strip()
    if not text or IPV4_RE.fullmatch(text):  # the usual case, without ipaddress's slower parse
        return text or None
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


# -- addresses ----------------------------------------------------------------------------------

def normalize_email(raw: str) -> str:
    """The one form of an address we store and compare; raises SubscriberError if it is invalid.

    Addresses compare case-insensitively (`Ana@Example.COM` is `ana@example.com`); Unicode is
    NFC-normalized; internationalized addresses are kept in Unicode. No DNS look-up.
    """
    address = unicodedata.normalize("NFC", (raw or "").strip()).lower()
    if not address:
        raise SubscriberError("empty email address")
    local, at, domain = address.rpartition("@")
    if len(local) > 64:  # RFC 5321; email-validator lets longer ones through
        raise SubscriberError(f"invalid email address {raw.strip()!r}: more than 64 characters "
                              "before the @-sign")
    # Fast path for the common case: a plain ASCII local part (checked with email-validator's
    # own pattern) at a domain email-validator has already accepted once.
    if at and len(address) <= 254 and local.isascii() \
            and DOT_ATOM_TEXT.match(local):
        return f"{local}@{_valid_domain(domain)}"
    try:
        return validate_email(address, check_deliverability=False).normalized.lower()
    except EmailNotValidError as e:
        raise SubscriberError(f"invalid email address {raw.strip()!r}: {e}") from None


@functools.lru_cache(maxsize=65536)
def _valid_domain(domain: str) -> str:
    try:
        return validate_email(f"x@{domain}", check_deliverability=False).domain.lower()
    except EmailNotValidError as e:
        raise SubscriberError(f"invalid email domain {domain!r}: {e}") from None


KEYED_HASH = "hmac-sha256:"  # how a keyed hash starts; older, unkeyed ones are 64 hex digits


HASHED_PREFIX = b"newsletter-forgotten:"


def email_hash(email: str, key: bytes) -> str:
    """The one-way hash a forgotten address leaves behind, keyed with a secret kept outside the
    database: a copy of the database alone cannot confirm a guessed address."""
    return _keyed_hash(hmac.new(key, HASHED_PREFIX, "sha256"), email)


def _keyed_hash(started: hmac.HMAC, email: str) -> str:
    # Continuing a copy of an HMAC already fed the key and the prefix: about twice as fast as a new
    # one per address, which counts when an import checks every row.
    mac = started.copy()
    mac.update(email.encode())
    return KEYED_HASH + base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode()


def unkeyed_email_hash(email: str) -> str:
    """The hash `forget` kept before it was keyed: still recognised, so no forgotten reader
    comes back after an upgrade."""
    return hashlib.sha256(HASHED_PREFIX + email.encode()).hexdigest()


def new_token() -> str:
    """A reader's secret for their links: 192 bits from the operating system's CSPRNG."""
    return secrets.token_urlsafe(24)


# -- the store of readers -----------------------------------------------------------------------

SecretKey = bytes | Callable[..., bytes]  # the key, or load_secret_key's signature: key(create=...)


class Subscribers:
    """Readers in a database. Create with `Subscribers.from_settings(settings)`, or
    `Subscribers.open(url, categories, secret_key)`."""

    def __init__(self, engine: Engine, secret_key: SecretKey | None = None):
        self.engine = engine
        # Loaded on first need: most commands never hash an address, and need no key file.
        self._secret_key = functools.partial(load_secret_key, None) if secret_key is None else secret_key

    @classmethod
    def open(cls, url: str, known: Iterable[Category] = (), secret_key: SecretKey | None = None, *,
             migrate: bool = True, create: bool = True) -> "Subscribers":
        """Readers at `url`. Without `secret_key`: $NEWSLETTER_SECRET_KEY, or ./newsletter.key.
        `migrate` and `create` as in `store.open_engine` (a server passes both false)."""
        engine = open_engine(url, migrate=migrate, create=create)
        subscribers = cls(engine, secret_key)
        try:
            subscribers.sync_categories(known)
        except BaseException:
            engine.dispose()
            raise
        return subscribers

    @classmethod
    def from_settings(cls, settings: Settings, *, migrate: bool = True,
                      create: bool = True) -> "Subscribers":
        """Readers in the settings' database, with the settings' secret key."""
        return cls.open(settings.database_url, settings.categories,
                        functools.partial(load_secret_key, settings), migrate=migrate, create=create)

    def close(self) -> None:
        self.engine.dispose()

    def ping(self) -> None:
        """Raise StoreError unless the database answers."""
        with self.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    def sync_categories(self, known: Iterable[Category]) -> None:
        """Make the categories table match the settings (slugs are never deleted: readers keep them)."""
        known = list(known)
        with self.engine.begin() as conn:
            stored = dict(conn.execute(sa.select(categories.c.slug, categories.c.name)).all())
            for category in known:
                if category.slug not in stored:
                    conn.execute(sa.insert(categories).values(slug=category.slug, name=category.name))
                elif stored[category.slug] != category.name:
                    conn.execute(sa.update(categories).where(categories.c.slug == category.slug)
                                 .values(name=category.name))
        self.categories = {c.slug: c.name for c in known}

    def check_categories(self, slugs: Iterable[str]) -> tuple[str, ...]:
        slugs = tuple(dict.fromkeys(s.strip() for s in slugs if s and s.strip()))
        for slug in slugs:
            if slug not in self.categories:
                known = ", ".join(self.categories) or "none are configured"
                raise SubscriberError(f"unknown category '{slug}' (known: {known})")
        return slugs

    # -- one reader ------------------------------------------------------------------------------

    def get(self, email: str, conn: Connection | None = None) -> Reader | None:
        address = normalize_email(email)
        with self._conn(conn) as c:
            return _whole_reader(c, c.execute(sa.select(readers).where(readers.c.email == address))
                                 .mappings().first())

    def require(self, email: str, conn: Connection | None = None) -> Reader:
        reader = self.get(email, conn)
        if reader is None:
            raise SubscriberError(f"no reader with address {normalize_email(email)}")
        return reader

    def is_forgotten(self, email: str, conn: Connection | None = None) -> bool:
        return bool(self.forgotten([normalize_email(email)], conn))

    def forgotten(self, addresses: Collection[str], conn: Connection | None = None) -> set[str]:
        """Which of these normalized addresses were forgotten at the reader's request, in one query."""
        with self._conn(conn) as c:
            keyed = suppressions.c.email_hash.startswith(KEYED_HASH, autoescape=True)
            total, keyed_count = c.execute(sa.select(sa.func.count(), sa.func.count().filter(keyed))
                                           .select_from(suppressions)).one()
            if not total or not addresses:
                return set()
            by_hash: dict[str, str] = {}
            if total > keyed_count:
                by_hash |= {unkeyed_email_hash(a): a for a in addresses}
            if keyed_count:
                started = hmac.new(self._key_to_check(), HASHED_PREFIX, "sha256")
                by_hash |= {_keyed_hash(started, a): a for a in addresses}
            query = sa.select(suppressions.c.email_hash)
            if total > len(by_hash):  # else reading every hash is cheaper than sending ours
                query = query.where(suppressions.c.email_hash.in_(list(by_hash)))
            return {by_hash[h] for h in c.execute(query).scalars() if h in by_hash}

    def add(self, email: str, *, name: str | None = None, categories: Iterable[str] = (),
            status: Status = Status.ACTIVE, consent: Consent) -> Reader:
        """Add a new reader. An address that is known, or was forgotten, is refused."""
        address = normalize_email(email)
        slugs = self.check_categories(categories)
        with self.engine.begin() as conn:
            if self.is_forgotten(address, conn):
                raise SubscriberError(f"{address} was forgotten at the reader's request and cannot be "
                                      "added again")
            existing = self.get(address, conn)
            if existing is not None:
                raise SubscriberError(f"{address} is already a reader ({existing.status.value})")
            reader_id = conn.execute(sa.insert(readers).values(new_reader_row(
                address, name=name, status=status, consent=consent, now=utcnow()))).inserted_primary_key[0]
            if slugs:
                conn.execute(sa.insert(reader_categories),
                             [{"reader_id": reader_id, "category": s} for s in slugs])
            log_event(conn, reader_id, "added", status=status.value, method=consent.method.value)
            return self.require(address, conn)

    def change_status(self, email: str, new: Status, *, reason: str | None = None,
                      ip: str | None = None, consent: Consent | None = None,
                      conn: Connection | None = None) -> Reader:
        """Move a reader to `new`; refuses transitions TRANSITIONS does not allow. `consent`, for
        a reader who comes back, replaces the consent record; `ip` is written to the event."""
        with self._begin(conn) as c:
            reader = self.require(email, c)
            if reader.status == new:
                return reader
            try:
                values = transition(reader.status, new, utcnow())
            except SubscriberError as e:
                raise SubscriberError(f"{reader.email} {e}") from None
            if consent is not None:
                values |= consent_columns(consent, values["status_changed_at"])
            c.execute(sa.update(readers).where(readers.c.id == reader.id).values(**values))
            log_event(c, reader.id, "status", old=reader.status.value, new=new.value, reason=reason,
                      ip=normalize_ip(ip))
            return self.require(reader.email, c)

    def unsubscribe(self, email: str, *, reason: str) -> tuple[Reader | None, bool]:
        """Unsubscribe a reader: (the reader, True), or (the reader, False) if they had already
        left (unsubscribed, bounced, complained), or (None, False) if they were forgotten."""
        with self.engine.begin() as conn:
            reader = self.get(email, conn)
            if reader is None and self.is_forgotten(email, conn):
                return None, False
            if reader is not None and reader.status in STOPPED:
                return reader, False
            return self.change_status(email, Status.UNSUBSCRIBED, reason=reason, conn=conn), True

    def set_categories(self, email: str, slugs: Iterable[str], *, ip: str | None = None,
                       reason: str | None = None) -> Reader:
        slugs = self.check_categories(slugs)
        with self.engine.begin() as conn:
            reader = self.require(email, conn)
            conn.execute(sa.delete(reader_categories).where(reader_categories.c.reader_id == reader.id))
            if slugs:
                conn.execute(sa.insert(reader_categories),
                             [{"reader_id": reader.id, "category": s} for s in slugs])
            log_event(conn, reader.id, "categories", old=list(reader.categories), new=list(slugs),
                      reason=reason, ip=normalize_ip(ip))
            return self.require(reader.email, conn)

    def last_status_event(self, reader_id: int) -> dict | None:
        """The detail of the reader's latest status change (old, new, reason, ip), if any."""
        with self.engine.connect() as conn:
            detail = conn.execute(sa.select(events.c.detail).where(
                events.c.reader_id == reader_id, events.c.kind == "status")
                .order_by(events.c.id.desc()).limit(1)).scalar()
        return json.loads(detail) if detail else None

    def rotate_token(self, email: str) -> Reader:
        """A new secret for the reader's links; the old links stop working."""
        with self.engine.begin() as conn:
            reader = self.require(email, conn)
            conn.execute(sa.update(readers).where(readers.c.id == reader.id).values(token=new_token()))
            log_event(conn, reader.id, "token_rotated")
            return self.require(reader.email, conn)

    def unsubscribe_by_token(self, token: str, *, reason: str, ip: str | None = None) -> tuple[int, bool] | None:
        """Unsubscribe the reader whose link secret is `token`, the short way (RFC 8058 one-click:
        mailbox providers call it for every "unsubscribe" a reader clicks): (reader id, whether
        this changed their status), or None for no such reader.

        One write transaction: an UPDATE that finds the reader by token and status at once (the
        status it changes from is in its WHERE clause, so a reader changed meanwhile is never
        overwritten), then the event; a look-up only when it changed nothing."""
        if not _plausible(token):
            return None
        now = utcnow()
        with self._writing() as conn:
            for old in (Status.ACTIVE, Status.PENDING):  # those may become unsubscribed (TRANSITIONS)
                row = conn.execute(_ONE_CLICK, {"b_token": token, "old": old.value, "now": now}).first()
                if row is not None and hmac.compare_digest(row.token.encode(), token.encode()):
                    log_event(conn, row.id, "status", old=old.value, new=Status.UNSUBSCRIBED.value,
                              reason=reason, ip=normalize_ip(ip))
                    return row.id, True
            row = conn.execute(_BY_TOKEN, {"token": token}).first()
        if row is None or not hmac.compare_digest(row.token.encode(), token.encode()):
            return None
        return row.id, False

    def by_token(self, token: str) -> Reader | None:
        """The reader whose link secret is `token`: found by index, then compared in constant time."""
        if not _plausible(token):
            return None
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(readers).where(readers.c.token == token)).mappings().first()
            if row is None or not hmac.compare_digest(row["token"].encode(), token.encode()):
                return None
            return _whole_reader(conn, row)

    def forget(self, email: str) -> None:
        """Erase the reader (GDPR): the row, its events and the copies of its address and token on
        its deliveries go; a keyed one-way hash stays."""
        with self.engine.begin() as conn:
            address = normalize_email(email)
            reader = self.get(address, conn)
            if reader is None and self.is_forgotten(address, conn):
                return
            if reader is None:
                raise SubscriberError(f"no reader with address {address}")
            key = self._key(create=True)  # before anything is erased: without it, no hash could stay
            conn.execute(sa.delete(events).where(events.c.reader_id == reader.id))
            conn.execute(sa.update(deliveries).where(deliveries.c.reader_id == reader.id)
                         .values(email=None, token=None))  # a copy kept for a batch in flight
            conn.execute(sa.delete(readers).where(readers.c.id == reader.id))
            conn.execute(sa.insert(suppressions).values(email_hash=email_hash(address, key),
                                                        reason="forgotten", created_at=utcnow()))
            log_event(conn, None, "forgotten")

    def unforget(self, email: str, conn: Connection | None = None) -> bool:
        """Drop the hash `forget` kept of `email`, once the person has consented anew (a
        confirmed signup); True if there was one."""
        address = normalize_email(email)
        with self._begin(conn) as c:
            if not self.is_forgotten(address, c):
                return False
            hashes = [unkeyed_email_hash(address)]
            with contextlib.suppress(SubscriberError):  # only unkeyed hashes, and no key: fine
                hashes.append(email_hash(address, self._key_to_check()))
            c.execute(sa.delete(suppressions).where(suppressions.c.email_hash.in_(hashes)))
            return True

    # -- many readers ----------------------------------------------------------------------------

    def iter_readers(self, status: Status | None = None, category: str | None = None,
                     chunk: int = 2000) -> Iterator[Reader]:
        """Every matching reader, in id order, a chunk at a time: memory stays flat at any size."""
        if category is not None:
            self.check_categories([category])
        last_id = 0
        while True:
            query = sa.select(readers).where(readers.c.id > last_id).order_by(readers.c.id).limit(chunk)
            if status is not None:
                query = query.where(readers.c.status == status.value)
            if category is not None:
                query = query.where(readers.c.id.in_(
                    sa.select(reader_categories.c.reader_id).where(reader_categories.c.category == category)))
            with self.engine.connect() as conn:
                rows = conn.execute(query).mappings().all()
                if not rows:
                    return
                slugs: dict[int, list[str]] = {}
                ids = [r["id"] for r in rows]
                for reader_id, slug in conn.execute(
                        sa.select(reader_categories.c.reader_id, reader_categories.c.category)
                        .where(reader_categories.c.reader_id.in_(ids))
                        .order_by(reader_categories.c.reader_id, reader_categories.c.category)):
                    slugs.setdefault(reader_id, []).append(slug)
            for row in rows:
                yield _reader(row, slugs.get(row["id"], ()))
            last_id = ids[-1]

    def active_categories(self) -> Iterator[tuple[int, tuple[str, ...]]]:
        """(reader id, categories) of every active reader in id order: what a send needs, streamed
        by two ordered queries merged, without building whole readers."""
        active = readers.c.status == Status.ACTIVE.value
        with self.engine.connect() as ids_conn, self.engine.connect() as cats_conn:
            ids = ids_conn.execution_options(yield_per=5000).execute(
                sa.select(readers.c.id).where(active).order_by(readers.c.id))
            cats = cats_conn.execution_options(yield_per=5000).execute(
                sa.select(reader_categories.c.reader_id, reader_categories.c.category)
                .join(readers, readers.c.id == reader_categories.c.reader_id).where(active)
                .order_by(reader_categories.c.reader_id, reader_categories.c.category))
            pending = next(cats, None)
            for (reader_id,) in ids:
                slugs = []
                while pending is not None and pending[0] <= reader_id:
                    if pending[0] == reader_id:
                        slugs.append(pending[1])
                    pending = next(cats, None)
                yield reader_id, tuple(slugs)

    def counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """Readers per status, and active readers per category."""
        with self.engine.connect() as conn:
            by_status = dict(conn.execute(sa.select(readers.c.status, sa.func.count())
                                          .group_by(readers.c.status)).all())
            by_category = dict(conn.execute(
                sa.select(reader_categories.c.category, sa.func.count())
                .join(readers, readers.c.id == reader_categories.c.reader_id)
                .where(readers.c.status == Status.ACTIVE.value)
                .group_by(reader_categories.c.category)).all())
        return ({s.value: by_status.get(s.value, 0) for s in Status},
                {slug: by_category.get(slug, 0) for slug in self.categories})

    def active_without_categories(self) -> int:
        """Active readers who chose no category: they get every story."""
        chose = sa.select(reader_categories.c.reader_id).where(reader_categories.c.reader_id == readers.c.id)
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(readers).where(
                readers.c.status == Status.ACTIVE.value, ~chose.exists())).scalar_one()

    def export_csv(self, out: IO[str], status: Status | None = None, category: str | None = None, *,
                   raw: bool = False) -> int:
        """Write the matching readers as CSV (see `write_csv`); returns how many."""
        return write_csv(out, self.iter_readers(status, category), raw=raw)

    # -- plumbing --------------------------------------------------------------------------------

    def _key(self, create: bool) -> bytes:
        if not isinstance(self._secret_key, bytes):
            self._secret_key = self._secret_key(create=create)
        return self._secret_key

    def _key_to_check(self) -> bytes:
        """The key, which keyed hashes in the database need: its loss is an error, never a
        silent miss (a forgotten reader would be let back in)."""
        try:
            return self._key(create=False)
        except ConfigError as e:
            raise SubscriberError(f"{e}; it is needed to recognise the forgotten addresses in the "
                                  "database (restore it from your backup)") from None

    def _conn(self, conn: Connection | None):
        return contextlib.nullcontext(conn) if conn is not None else self.engine.connect()

    def _begin(self, conn: Connection | None):
        return contextlib.nullcontext(conn) if conn is not None else self.engine.begin()

    def _writing(self) -> contextlib.AbstractContextManager[Connection]:
        return writing(self.engine)


_BY_TOKEN = sa.select(readers.c.id, readers.c.email, readers.c.token, readers.c.status).where(
    readers.c.token == sa.bindparam("token"))
# transition(ACTIVE or PENDING, UNSUBSCRIBED) as one statement
assert set(_status_columns(Status.UNSUBSCRIBED, utcnow())) == {"status", "status_changed_at", "unsubscribed_at"}
_ONE_CLICK = (sa.update(readers)
              .where(readers.c.token == sa.bindparam("b_token"), readers.c.status == sa.bindparam("old"))
              .values(status=Status.UNSUBSCRIBED.value, status_changed_at=sa.bindparam("now"),
                      unsubscribed_at=sa.bindparam("now"))
              .returning(readers.c.id, readers.c.token))
_WRITERS: "weakref.WeakKeyDictionary[Engine, threading.Lock]" = weakref.WeakKeyDictionary()
_WRITERS_LOCK = threading.Lock()


@contextlib.contextmanager
def writing(engine: Engine) -> Iterator[Connection]:
    """A write transaction. On SQLite, one at a time per process: threads of a web server
    queue here instead of in SQLite's busy handler, which backs off in sleeps of up to 100 ms."""
    if engine.dialect.name != "sqlite":
        with engine.begin() as conn:
            yield conn
        return
    with _sqlite_writer(engine), engine.begin() as conn:
        yield conn


def _sqlite_writer(engine: Engine) -> threading.Lock:
    with _WRITERS_LOCK:
        lock = _WRITERS.get(engine)
        if lock is None:
            lock = _WRITERS[engine] = threading.Lock()
        return lock


def _plausible(token: str) -> bool:
    """Could this be a reader's token (see new_token)? Anything else needs no database look-up."""
    return bool(token) and len(token) <= 64 and token.isascii()



def log_event(conn: Connection, reader_id: int | None, kind: str, **detail) -> None:
    """Record what happened to a reader (or, with no reader, to the list) in the events table."""
    conn.execute(sa.insert(events).values(
        reader_id=reader_id, kind=kind, at=utcnow(),
        detail=json.dumps({k: v for k, v in detail.items() if v is not None}) if detail else None))


def _whole_reader(conn: Connection, row) -> Reader | None:
    """The reader of a `readers` row, with their categories (None for no row)."""
    if row is None:
        return None
    slugs = conn.execute(sa.select(reader_categories.c.category)
                         .where(reader_categories.c.reader_id == row["id"])
                         .order_by(reader_categories.c.category)).scalars().all()
    return _reader(row, slugs)


def _reader(row, slugs) -> Reader:
    return Reader(id=row["id"], email=row["email"], name=row["name"], status=Status(row["status"]),
                  token=row["token"], categories=tuple(slugs), created_at=row["created_at"],
                  status_changed_at=row["status_changed_at"], confirmed_at=row["confirmed_at"],
                  unsubscribed_at=row["unsubscribed_at"], consent_at=row["consent_at"],
                  consent_method=row["consent_method"], consent_ip=row["consent_ip"],
                  consent_source=row["consent_source"])
