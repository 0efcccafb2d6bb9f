"""Signup with double opt-in: a reader asks (the web form, or the writer's `resubscribe`), gets an
email with a signed link, and only confirming from the page that link opens makes them active.

What the signup form may never do:
- tell who subscribes: every request that looks like an address gets the same answer, whatever
  the address's status (the callers show one page), and an active reader gets no email;
- change a reader who has not clicked: an unsubscribed, bounced or complained reader keeps their
  status until they confirm (`prune-pending` deletes only readers who were never more than
  pending, so their record of stopping is never lost);
- mail anyone too often: at most `confirmations_per_day` confirmation emails per address (the
  rest are silently not sent), counted across server processes (see `ratelimits`).

A confirmation link carries the signup's id, signed with the secret key and dated: it works for
`confirm_hours`, once, and not after the reader's status changed since they signed up.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import hmac
import logging
import re
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlsplit

import jinja2
import sqlalchemy as sa
from itsdangerous import BadSignature, SignatureExpired, TimestampSigner, URLSafeTimedSerializer

from .config import UNSAFE_CHARACTERS, Settings
from .errors import NewsletterError, ProviderError, RenderError, StoreConflict, SubscriberError
from .links import Links
from .providers import Message, Provider, make_provider
from .ratelimits import Hit, RateLimiter
from .render import LAYOUT, Renderer
from .store import events, reader_categories, readers, signups, utcnow
from .subscribers import (TRANSITIONS, Consent, ConsentMethod, Reader, Status, Subscribers, clean_name,
                          consent_columns, log_event, new_reader_row, normalize_email, normalize_ip)

log = logging.getLogger("newsletter.signups")

CONFIRM_PURPOSE = b"newsletter-confirm\x00"  # keeps the link key apart from any other use of the key
CONFIRMED = "confirmed signup"  # the reason on the status events of a confirmation
CLI_SOURCE = "newsletter subscribers resubscribe"
SEND_TIMEOUT = 10.0  # seconds: the web form waits for the provider while the visitor waits for us
SOURCE_LENGTH = 300  # what the database holds
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
PLAUSIBLE = re.compile(r"[^@\s]+@[^@\s]+")  # could be meant as an address: gets the same answer


class Outcome(str, enum.Enum):
    """What a signup request did. The web form shows the same page for all of them."""

    SENT = "sent"  # stored, and the confirmation email went out
    NOT_SENT = "not sent"  # stored, but the provider failed: signing up again tries again
    ACTIVE = "active"  # an active reader: nothing changed, no email
    LIMITED = "limited"  # enough confirmation emails to this address today: nothing stored or sent
    INVALID = "invalid"  # not an address we can mail: nothing stored or sent


@dataclass(frozen=True)
class SignupResult:
    outcome: Outcome
    reader_id: int | None = None
    signup_id: int | None = None
    error: str | None = None  # why the provider failed, for the writer's terminal (never logged)


class State(str, enum.Enum):
    """Where a confirmation link stands."""

    READY = "ready"  # valid: confirming makes the reader active
    CONFIRMED = "confirmed"  # confirmed just now
    EXPIRED = "expired"  # older than confirm_hours
    INVALID = "invalid"  # tampered with, cut short, or its signup is gone
    USED = "used"  # confirmed already
    STALE = "stale"  # the reader's status changed after they signed up (e.g. unsubscribed)
    ACTIVE = "active"  # the reader is active already (through another link, or otherwise)


@dataclass(frozen=True)
class Confirmation:
    state: State
    reader: Reader | None = None
    name: str | None = None  # as given at signup
    categories: tuple[str, ...] = ()  # as chosen at signup; none: every story


@dataclass(frozen=True)
class _Signup:
    id: int
    reader_id: int
    name: str | None
    categories: tuple[str, ...]
    ip: str | None
    source: str | None
    created_at: dt.datetime
    confirmed_at: dt.datetime | None

    @property
    def stamp(self) -> int:
        """The signup's creation in microseconds: a link names this exact signup, even should an
        SQLite row id be used again after a prune."""
        return (self.created_at - EPOCH) // dt.timedelta(microseconds=1)


class _ClockSigner(TimestampSigner):
    """itsdangerous' signer, dating and checking links by our clock (tests move it)."""

    def __init__(self, *args, clock: Callable[[], dt.datetime], **kwargs):
        super().__init__(*args, **kwargs)
        self.clock = clock

    def get_timestamp(self) -> int:
        return int(self.clock().timestamp())


class Signups:
    """Signups and their confirmation, over a `Subscribers` store. The web app and the CLI each
    make one with the same secret key, so either's links confirm in the other."""

    def __init__(self, subscribers: Subscribers, settings: Settings, key: bytes, *,
                 clock: Callable[[], dt.datetime] = utcnow,
                 provider: Callable[[Settings], Provider] = make_provider):
        self.subscribers, self.settings = subscribers, settings
        self.engine = subscribers.engine
        self.clock = clock
        self.limits = RateLimiter(self.engine, key, clock=lambda: self.clock())
        self.links = Links(settings.base_url)
        self._make_provider = provider
        self._serializer = URLSafeTimedSerializer(
            hmac.new(key, CONFIRM_PURPOSE, hashlib.sha256).digest(), salt="newsletter-confirm",
            signer=_ClockSigner, signer_kwargs={"clock": lambda: self.clock()})
        self._renderer: Renderer | None = None

    # -- asking ------------------------------------------------------------------------------------

    def allow_request(self, ip: str | None) -> Hit:
        """Count a signup request from `ip`: over `signups_per_ip_hour`, refuse it (HTTP 429)."""
        return self.limits.hit("ip", normalize_ip(ip) or "unknown", limit=self.settings.signups_per_ip_hour,
                               per=dt.timedelta(hours=1))

    def sign_up(self, email: str, *, name: str | None = None, categories=(), ip: str | None = None,
                source: str | None = None) -> SignupResult:
        """A signup through the form: store it and send the confirmation email, unless the address
        cannot be mailed, is active already, or had enough confirmation emails today."""
        try:
            address = normalize_email(email)
        except SubscriberError:
            return SignupResult(Outcome.INVALID)
        return self._request(address, clean_name(name), self.subscribers.check_categories(categories),
                             normalize_ip(ip), bounded(source), by_reader=True)

    def resubscribe(self, email: str) -> SignupResult:
        """Send the confirmation email to a reader who asked the writer to come back: they become
        active only by confirming. Refuses an active reader."""
        reader = self.subscribers.require(email)
        if reader.status == Status.ACTIVE:
            raise SubscriberError(f"{reader.email} is already active")
        known = [s for s in reader.categories if s in self.subscribers.categories]
        return self._request(reader.email, reader.name, tuple(known), None, CLI_SOURCE, by_reader=False)

    def _request(self, address: str, name: str | None, categories: tuple[str, ...], ip: str | None,
                 source: str | None, *, by_reader: bool) -> SignupResult:
        reader = self.subscribers.get(address)
        if reader is not None and reader.status == Status.ACTIVE:
            return SignupResult(Outcome.ACTIVE, reader.id)
        emails = self.limits.hit("address", address, limit=self.settings.confirmations_per_day,
                                 per=dt.timedelta(days=1))
        if not emails.allowed:
            return SignupResult(Outcome.LIMITED, reader.id if reader else None)
        try:
            signup = self._store(address, name, categories, ip, source, by_reader)
        except StoreConflict:  # the same new address, signed up by two requests at once
            signup = self._store(address, name, categories, ip, source, by_reader)
        if signup is None:  # became active meanwhile
            return SignupResult(Outcome.ACTIVE)
        return self._send(address, signup)

    def _store(self, address: str, name: str | None, categories: tuple[str, ...], ip: str | None,
               source: str | None, by_reader: bool) -> _Signup | None:
        """The signup row, and a pending reader for a new address. A known reader keeps their
        status: an unsubscribed, bounced or complained one changes only by confirming. A pending
        reader who asks again (`by_reader`: not the writer for them) gets this request as their
        consent record."""
        now = self.clock()
        with self.engine.begin() as conn:
            reader = self.subscribers.get(address, conn)
            consent = Consent(ConsentMethod.FORM, source=source, ip=ip, at=now)
            if reader is None:  # new, or forgotten: the hash `forget` kept goes only on confirmation
                row = new_reader_row(address, name=name, status=Status.PENDING, consent=consent, now=now)
                reader_id = conn.execute(sa.insert(readers).values(row)).inserted_primary_key[0]
                if categories:
                    conn.execute(sa.insert(reader_categories),
                                 [{"reader_id": reader_id, "category": s} for s in categories])
                log_event(conn, reader_id, "added", status=Status.PENDING.value, method=consent.method.value)
            elif reader.status == Status.ACTIVE:
                return None
            else:
                reader_id = reader.id
                if reader.status == Status.PENDING and by_reader:
                    conn.execute(sa.update(readers).where(readers.c.id == reader_id)
                                 .values(**consent_columns(consent, now)))
            values = {"reader_id": reader_id, "name": name, "categories": ",".join(categories), "ip": ip,
                      "source": source, "created_at": now}
            signup_id = conn.execute(sa.insert(signups).values(values)).inserted_primary_key[0]
        return _Signup(signup_id, reader_id, name, categories, ip, source, now, None)

    def _send(self, address: str, signup: _Signup) -> SignupResult:
        """Send the confirmation email now. A failure keeps the signup (the reader may sign up
        again, or the writer send it with `resubscribe`) and is logged by reader id only: a
        provider's message may hold the address."""
        try:
            message = self._message(address, signup)
            provider = self._make_provider(self.settings.with_overrides(
                request_timeout=min(self.settings.request_timeout, SEND_TIMEOUT)))
            try:
                result = provider.send([message], idempotency_key=f"confirm-{signup.id}-{signup.stamp}")
            finally:
                provider.close()
            if not result.outcomes or not result.outcomes[0].ok:
                raise ProviderError(result.outcomes[0].error if result.outcomes else "no answer")
        except NewsletterError as e:
            log.warning("reader %d: the confirmation email was not sent (%s)", signup.reader_id,
                        type(e).__name__)
            return SignupResult(Outcome.NOT_SENT, signup.reader_id, signup.id, error=str(e))
        with self.engine.begin() as conn:
            conn.execute(sa.update(signups).where(signups.c.id == signup.id).values(emailed_at=self.clock()))
        log.info("reader %d: confirmation email sent", signup.reader_id)
        return SignupResult(Outcome.SENT, signup.reader_id, signup.id)

    # -- the confirmation email --------------------------------------------------------------------

    def _link(self, signup: _Signup) -> str:
        """The signed, dated confirmation link of `signup`."""
        return self.links.confirm(self._serializer.dumps([signup.id, signup.stamp]))

    def _message(self, address: str, signup: _Signup) -> Message:
        """The confirmation email: templates `email/confirm.mjml` and `email/confirm.txt`."""
        renderer = self._renderer = self._renderer or Renderer(self.settings)
        context = {"settings": self.settings, "name": signup.name, "link": self._link(signup),
                   "hours": self.settings.confirm_hours, "topics": self.topics(signup.categories),
                   "layout": LAYOUT}
        try:
            html = renderer.inline(renderer.compile(
                renderer.env.get_template("email/confirm.mjml").render(context)))
            text = renderer.env.get_template("email/confirm.txt").render(context)
        except jinja2.TemplateError as e:
            raise RenderError(f"confirmation email template: {e}") from None
        return Message(key=f"confirm-{signup.id}", to=address, sender=self.settings.sender,
                       reply_to=self.settings.reply_to,
                       subject=f"Confirm your subscription to {self.settings.name}",
                       html=html, text=text.strip() + "\n", tags={"kind": "confirmation"})

    def topics(self, categories) -> list[str]:
        """The display names of `categories` (none: every story, an empty list)."""
        return [c.name for c in self.settings.categories if c.slug in set(categories)]

    # -- confirming --------------------------------------------------------------------------------

    def check(self, signed: str) -> Confirmation:
        """Where the link `signed` stands; changes nothing (mail scanners fetch every link)."""
        found = self._read(signed)
        if isinstance(found, State):
            return Confirmation(found)
        with self.engine.connect() as conn:
            return self._state(conn, _load_signup(conn, found[0]), found[1])

    def confirm(self, signed: str, *, ip: str | None = None) -> Confirmation:
        """Confirm the signup of link `signed`: the reader becomes active with the signup's
        consent, categories and (if they have none) name. Anything but a READY link changes nothing."""
        found = self._read(signed)
        if isinstance(found, State):
            return Confirmation(found)
        signup_id, stamp = found
        now = self.clock()
        with self.engine.connect() as conn, conn.begin() as transaction:
            # Claim the signup before anything else: of two confirmations at once, one finds it
            # claimed (and on SQLite the transaction holds the write lock from its first statement).
            claimed = conn.execute(sa.update(signups).values(confirmed_at=now).where(
                signups.c.id == signup_id, signups.c.confirmed_at.is_(None))).rowcount
            signup = _load_signup(conn, signup_id)
            checked = self._state(conn, signup, stamp, claimed=claimed == 1)
            if checked.state != State.READY:
                transaction.rollback()
                return checked
            reader = self._activate(conn, checked.reader, signup, normalize_ip(ip), now)
        log.info("reader %d confirmed their subscription", reader.id)
        return Confirmation(State.CONFIRMED, reader, checked.name, checked.categories)

    def _read(self, signed: str) -> tuple[int, int] | State:
        """(signup id, stamp) from a link's signed part, or why not."""
        if not signed or len(signed) > 200:
            return State.INVALID
        try:
            signup_id, stamp = self._serializer.loads(signed, max_age=self.settings.confirm_hours * 3600)
        except SignatureExpired:  # only ever raised for a genuine signature
            return State.EXPIRED
        except (BadSignature, TypeError, ValueError):
            return State.INVALID
        if not isinstance(signup_id, int) or not isinstance(stamp, int):
            return State.INVALID
        return signup_id, stamp

    def _state(self, conn: sa.Connection, signup: _Signup | None, stamp: int, *,
               claimed: bool = False) -> Confirmation:
        if signup is None or signup.stamp != stamp:
            return Confirmation(State.INVALID)
        email = conn.execute(sa.select(readers.c.email).where(readers.c.id == signup.reader_id)).scalar_one()
        reader = self.subscribers.require(email, conn)

        def found(state: State) -> Confirmation:
            return Confirmation(state, reader, signup.name, signup.categories)

        if signup.confirmed_at is not None and not claimed:
            return found(State.USED)
        if reader.status == Status.ACTIVE:
            return found(State.ACTIVE)
        if reader.status_changed_at > signup.created_at:  # e.g. unsubscribed after signing up
            return found(State.STALE)
        return found(State.READY)

    def _activate(self, conn: sa.Connection, reader: Reader, signup: _Signup, ip: str | None,
                  now: dt.datetime) -> Reader:
        consent = Consent(ConsentMethod.FORM, source=signup.source, ip=ip, at=now)
        if Status.ACTIVE not in TRANSITIONS[reader.status]:
            # complained: their new consent makes them pending, and its confirmation active
            self.subscribers.change_status(reader.email, Status.PENDING, reason=CONFIRMED, ip=ip, conn=conn)
        self.subscribers.change_status(reader.email, Status.ACTIVE, reason=CONFIRMED, ip=ip,
                                       consent=consent, conn=conn)
        if signup.name and not reader.name:
            conn.execute(sa.update(readers).where(readers.c.id == reader.id).values(name=signup.name))
        wanted = [s for s in signup.categories if s in self.subscribers.categories]
        if set(wanted) != set(reader.categories):
            conn.execute(sa.delete(reader_categories).where(reader_categories.c.reader_id == reader.id))
            if wanted:
                conn.execute(sa.insert(reader_categories),
                             [{"reader_id": reader.id, "category": s} for s in wanted])
            log_event(conn, reader.id, "categories", old=list(reader.categories), new=wanted,
                      reason=CONFIRMED, ip=ip)
        log_event(conn, reader.id, "signup_confirmed", signed_up_at=signup.created_at.isoformat(),
                  signup_ip=signup.ip, ip=ip)
        self.subscribers.unforget(reader.email, conn)  # they consented anew
        # Their other requests are superseded: those links now say they cannot be used.
        conn.execute(sa.delete(signups).where(signups.c.reader_id == reader.id,
                                              signups.c.confirmed_at.is_(None)))
        return self.subscribers.require(reader.email, conn)

    # -- housekeeping ------------------------------------------------------------------------------

    def prune_pending(self, older_than: dt.timedelta) -> int:
        """Delete pending readers who signed up (every time) more than `older_than` ago and never
        confirmed, with their signups and events; returns how many. Readers of any other status,
        and pending readers who never used the form (imported, added), are left alone."""
        cutoff = self.clock() - older_than
        own = signups.c.reader_id == readers.c.id
        stale = sa.and_(readers.c.status == Status.PENDING.value,
                        sa.exists().where(own),
                        ~sa.exists().where(own, sa.or_(signups.c.created_at >= cutoff,
                                                       signups.c.confirmed_at.is_not(None))))
        with self.engine.begin() as conn:
            # Locked: a signup arriving meanwhile updates the reader's row and so waits for us.
            ids = conn.execute(sa.select(readers.c.id).where(stale).with_for_update()).scalars().all()
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                conn.execute(sa.delete(events).where(events.c.reader_id.in_(chunk)))
                conn.execute(sa.delete(signups).where(signups.c.reader_id.in_(chunk)))
                conn.execute(sa.delete(readers).where(readers.c.id.in_(chunk)))
            if ids:
                log_event(conn, None, "pruned_pending", count=len(ids))
        return len(ids)


def _load_signup(conn: sa.Connection, signup_id: int) -> _Signup | None:
    row = conn.execute(sa.select(signups).where(signups.c.id == signup_id)).mappings().first()
    if row is None:
        return None
    return _Signup(row["id"], row["reader_id"], row["name"],
                   tuple(s for s in row["categories"].split(",") if s), row["ip"], row["source"],
                   row["created_at"], row["confirmed_at"])


def looks_like_address(text: str) -> bool:
    """True for anything that could be meant as an email address: those all get the same answer,
    valid or not. Only what cannot be one at all (empty, no @, spaces, too long) is refused."""
    return len(text) <= 254 and PLAUSIBLE.fullmatch(text) is not None


def bounded(source: str | None) -> str | None:
    """Where a signup came from, as recorded: a URL without its query or fragment (they may hold
    someone's secrets) or a short text, without control characters, at most SOURCE_LENGTH long."""
    text = UNSAFE_CHARACTERS.sub("", (source or "").strip())
    if not text or text == "null":  # `Origin: null`, sent by a page with no-referrer
        return None
    parts = urlsplit(text)
    if parts.scheme in ("http", "https") and parts.hostname:
        try:
            port = f":{parts.port}" if parts.port else ""
        except ValueError:  # not a number
            port = ""
        text = f"{parts.scheme}://{parts.hostname}{port}{parts.path}"  # no user:password@ either
    return text[:SOURCE_LENGTH]


def where_confirmations_go(settings: Settings) -> str | None:
    """The folder confirmation emails are written to when the provider is the outbox, else None."""
    return str(settings.outbox_dir) if (settings.provider or "outbox") == "outbox" else None
