"""What the provider reports about each email after it was accepted, and what that does to readers.

Reports come from Resend's webhooks (`web/webhooks.py`) and, for SMTP, from bounce and complaint
messages in a mailbox (`bounces.py`). Each becomes one `Report`, and `Reports.record` is the one
place that stores it and acts on it, in one transaction:

- it is stored once: a report with a (source, report id) already stored changes nothing, since
  Resend delivers a webhook again until it is answered, and a mailbox may be read twice;
- it is matched to our delivery by the provider's message id (Resend's email id, or the
  Message-ID our SMTP and outbox providers give each email), else, for a mailbox report that names
  only an address, to that reader; a report matching nothing is kept and counted, not an error;
- a permanent bounce makes the reader `bounced`, a complaint `complained`: both stop all mail at
  once, a run in progress included (the ledger claims only active readers); a transient bounce is
  counted, once per run, and `soft_bounce_limit` runs in a row with one make the reader bounced;
  a delivery resets that count. Each change is a reader event naming the issue and the reason.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from .errors import SubscriberError
from .subscribers import STOPPED, Status, log_event, normalize_email, transition, writing
from .store import deliveries, readers, reports, send_runs, utcnow

log = logging.getLogger("newsletter.reports")

# Resend's event types and what we call them; other types are stored under their own name.
RESEND_KINDS = {
    "email.sent": "sent", "email.delivered": "delivered", "email.delivery_delayed": "delayed",
    "email.bounced": "bounced", "email.complained": "complained", "email.opened": "opened",
    "email.clicked": "clicked", "email.failed": "failed", "email.suppressed": "suppressed",
}
BOUNCE_TYPES = ("permanent", "transient", "undetermined")
MAX_TEXT = 2000  # a provider's reason or a link, as stored


@dataclass(frozen=True)
class Report:
    source: str  # resend | mailbox
    report_id: str  # unique per source: Resend's svix-id, a report message's Message-ID
    kind: str  # sent | delivered | delayed | bounced | complained | opened | clicked | failed | suppressed | ...
    message_id: str | None  # the provider's id of the email the report is about
    occurred_at: dt.datetime | None = None  # when it happened, as the provider says (else: now)
    bounce_type: str | None = None  # for a bounce: permanent | transient | undetermined
    detail: str | None = None  # the provider's reason, in its words
    link: str | None = None  # for a click: the link
    recipient: str | None = None  # the address reported, where the message id may be unknown


@dataclass(frozen=True)
class Recorded:
    """What `record` did: stored (False: a report seen before), matched (to a delivery or
    reader), and the reader's new status if it changed."""

    stored: bool
    matched: bool
    reader_id: int | None = None
    new_status: Status | None = None


class Reports:
    def __init__(self, engine: Engine, *, soft_bounce_limit: int = 3):
        self.engine = engine
        self.soft_bounce_limit = soft_bounce_limit

    def record(self, report: Report) -> Recorded:
        now = utcnow()
        with writing(self.engine) as conn:
            delivery = self._delivery(conn, report)
            reader_id = delivery.reader_id if delivery is not None else self._reader_by_address(conn, report)
            run_id = delivery.run_id if delivery is not None else None
            row = {
                "source": report.source, "report_id": report.report_id[:200], "kind": report.kind[:32],
                "message_id": (report.message_id or None) and report.message_id[:200],
                "delivery_id": delivery.id if delivery is not None else None, "run_id": run_id,
                "reader_id": reader_id,
                "bounce_type": report.bounce_type if report.bounce_type in BOUNCE_TYPES else None,
                "detail": _clip(report.detail), "link": _clip(report.link),
                "occurred_at": report.occurred_at or now, "received_at": now,
            }
            if not self._insert_once(conn, row):
                return Recorded(stored=False, matched=reader_id is not None, reader_id=reader_id)
            new_status = self._act(conn, report, reader_id, run_id) if reader_id is not None else None
        if reader_id is None:
            log.info("%s report %s about an email we do not know (%s)", report.source, report.kind,
                     report.message_id or "no message id")
        return Recorded(stored=True, matched=reader_id is not None, reader_id=reader_id, new_status=new_status)

    # -- matching ----------------------------------------------------------------------------

    def _delivery(self, conn: Connection, report: Report):
        if not report.message_id:
            return None
        return conn.execute(sa.select(deliveries.c.id, deliveries.c.run_id, deliveries.c.reader_id)
                            .where(deliveries.c.message_id == report.message_id)
                            .order_by(deliveries.c.id.desc()).limit(1)).first()

    def _reader_by_address(self, conn: Connection, report: Report) -> int | None:
        if not report.recipient:
            return None
        try:
            email = normalize_email(report.recipient)
        except SubscriberError:
            return None
        return conn.execute(sa.select(readers.c.id).where(readers.c.email == email)).scalar()

    def _insert_once(self, conn: Connection, row: dict) -> bool:
        """Insert the report unless one with its source and id is stored; whether it was new."""
        dialect = conn.dialect.name
        if dialect in ("sqlite", "postgresql"):
            insert = (sqlite.insert if dialect == "sqlite" else postgresql.insert)(reports)
            done = conn.execute(insert.values(**row).on_conflict_do_nothing(
                index_elements=["source", "report_id"]).returning(reports.c.id)).first()
            return done is not None
        seen = conn.execute(sa.select(reports.c.id).where(
            reports.c.source == row["source"], reports.c.report_id == row["report_id"])).first()
        if seen is None:
            conn.execute(sa.insert(reports).values(**row))
        return seen is None

    # -- what a report does to its reader --------------------------------------------------------

    def _act(self, conn: Connection, report: Report, reader_id: int, run_id: int | None) -> Status | None:
        reader = conn.execute(sa.select(readers.c.status, readers.c.soft_bounces, readers.c.soft_bounce_run)
                              .where(readers.c.id == reader_id)).first()
        if reader is None:
            return None
        issue = conn.execute(sa.select(send_runs.c.issue).where(send_runs.c.id == run_id)).scalar() \
            if run_id is not None else None
        reason = report.detail or report.kind
        if report.kind == "complained" or (report.kind == "suppressed" and "complain" in reason.lower()):
            return self._stop(conn, reader_id, reader.status, Status.COMPLAINED, report, issue,
                              f"complaint: {reason}" if report.kind == "complained" else f"suppressed: {reason}")
        if report.kind == "suppressed":
            return self._stop(conn, reader_id, reader.status, Status.BOUNCED, report, issue, f"suppressed: {reason}")
        if report.kind == "bounced" and report.bounce_type == "permanent":
            return self._stop(conn, reader_id, reader.status, Status.BOUNCED, report, issue,
                              f"permanent bounce: {reason}")
        if report.kind == "bounced":  # transient or undetermined: counted once per run
            if run_id is not None and reader.soft_bounce_run == run_id:
                return None
            count = reader.soft_bounces + 1
            conn.execute(sa.update(readers).where(readers.c.id == reader_id)
                         .values(soft_bounces=count, soft_bounce_run=run_id))
            if count >= self.soft_bounce_limit:
                return self._stop(conn, reader_id, reader.status, Status.BOUNCED, report, issue,
                                  f"{count} issues in a row bounced for a while; the last: {reason}")
            return None
        if report.kind == "delivered" and reader.soft_bounces:
            conn.execute(sa.update(readers).where(readers.c.id == reader_id)
                         .values(soft_bounces=0, soft_bounce_run=None))
        return None

    def _stop(self, conn: Connection, reader_id: int, old: str, new: Status, report: Report,
              issue: str | None, reason: str) -> Status | None:
        """Move the reader to `new` if they are still mailed (active or pending); a reader who
        left already keeps their status, and the report is kept."""
        old_status = Status(old)
        if old_status in STOPPED:
            return None
        values = transition(old_status, new, utcnow())
        conn.execute(sa.update(readers).where(readers.c.id == reader_id, readers.c.status == old)
                     .values(**values))
        log_event(conn, reader_id, "status", old=old, new=new.value, reason=_clip(reason, 500),
                  issue=issue, source=report.source)
        log.info("reader %d is %s (%s report)", reader_id, new.value, report.source)
        return new


def _clip(text: str | None, limit: int = MAX_TEXT) -> str | None:
    if text is None:
        return None
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"
