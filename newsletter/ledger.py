"""Send runs and the delivery ledger in the database: the store side of the send engine.

A delivery moves queued → sending (claimed in a batch, committed before the provider is called)
→ sent | failed | skipped, or back to queued for a temporary refusal. A batch found `sending`
after a crash is sent again as it was, under the same idempotency key.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import os
import socket
from dataclasses import dataclass
from typing import Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from .errors import RunBusy, RunNotFound, RunUnfinished, SendError, StoreConflict
from .store import deliveries, insert_many, readers, send_runs, update_many, utcnow
from .subscribers import Status

MAX_ATTEMPTS = 3  # temporary refusals of one message before it counts as failed
KEY_LIFETIME = dt.timedelta(hours=23)  # Resend keeps idempotency keys for 24 hours
MAYBE_DELIVERED = "may or may not have been delivered; check the provider's log"


class RunStatus(str, enum.Enum):
    SENDING = "sending"  # being sent, or stopped by a crash: resume it
    PAUSED = "paused"  # stopped on purpose or by the provider: resume it
    FINISHED = "finished"
    CANCELLED = "cancelled"  # ended by the user: what it delivered counts, the rest was never sent


class State(str, enum.Enum):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass
class Run:
    id: int
    issue: str
    digest_path: str
    digest_sha256: str
    settings_sha256: str | None
    subject: str
    provider: str
    status: RunStatus
    reason: str | None
    created_at: dt.datetime
    finished_at: dt.datetime | None
    updated_at: dt.datetime | None = None  # for a paused run: when it paused
    transient: bool = False  # paused for a reason time may fix (a quota, an outage)
    auto_retries: int = 0  # how often the scheduler tried it again since someone last resumed it


@dataclass
class Recipient:
    delivery_id: int
    email: str
    name: str | None
    token: str
    variant: str


@dataclass
class Batch:
    key: str  # the idempotency key: the run and the deliveries, so a retry is the same request
    recipients: list[Recipient]
    skipped: int = 0  # deliveries skipped while claiming it (readers who left)


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Ledger:
    """The SQLAlchemy implementation of the store the send engine depends on."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.owner = _owner()

    # -- runs ------------------------------------------------------------------------------------

    def create_run(self, *, issue: str, digest_path: str, digest_sha256: str, settings_sha256: str,
                   subject: str, provider: str, recipients: Iterable[tuple[int, str]]) -> Run:
        """A run and one queued delivery per (reader id, variant), in one transaction."""
        now = utcnow()
        try:
            with self.engine.begin() as conn:
                run_id = conn.execute(sa.insert(send_runs).values(
                    issue=issue, digest_path=digest_path, digest_sha256=digest_sha256,
                    settings_sha256=settings_sha256, subject=subject, provider=provider,
                    status=RunStatus.SENDING.value, created_at=now, updated_at=now)).inserted_primary_key[0]
                chunk: list[dict] = []
                for reader_id, variant in recipients:
                    chunk.append({"run_id": run_id, "reader_id": reader_id, "variant": variant,
                                  "state": State.QUEUED.value, "attempts": 0, "updated_at": now})
                    if len(chunk) == 5000:
                        insert_many(conn, deliveries, chunk)
                        chunk = []
                insert_many(conn, deliveries, chunk)
        except StoreConflict:  # the unique index on unfinished runs of an issue
            other = [r.id for r in self.runs(issue) if r.status in (RunStatus.SENDING, RunStatus.PAUSED)]
            raise RunUnfinished(f"another run of {issue} was started at the same moment; see "
                                "`newsletter runs`", run_id=other[-1] if other else None) from None
        return self.run(run_id)

    def run(self, run_id: int) -> Run:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(send_runs).where(send_runs.c.id == run_id)).mappings().first()
        if row is None:
            raise RunNotFound(f"there is no send run {run_id} (see `newsletter runs`)", run_id=run_id)
        return _run(row)

    def runs(self, issue: str | None = None) -> list[Run]:
        query = sa.select(send_runs).order_by(send_runs.c.id)
        if issue is not None:
            query = query.where(send_runs.c.issue == issue)
        with self.engine.connect() as conn:
            return [_run(r) for r in conn.execute(query).mappings()]

    def set_status(self, run_id: int, status: RunStatus, reason: str | None = None, *,
                   transient: bool = False) -> None:
        """`transient`: a pause time may fix (a quota, an outage), which the scheduler retries."""
        now = utcnow()
        values = {"status": status.value, "reason": reason, "updated_at": now,
                  "pause_transient": transient and status == RunStatus.PAUSED}
        if status == RunStatus.FINISHED:
            values["finished_at"] = now
        with self.engine.begin() as conn:
            conn.execute(sa.update(send_runs).where(send_runs.c.id == run_id).values(**values))

    def take_retry(self, run: Run) -> bool:
        """Count one retry of paused `run` by a scheduler; False if another process took it (or
        changed the run) first, so two schedulers never both retry one pause."""
        with self.engine.begin() as conn:
            return conn.execute(sa.update(send_runs).where(
                send_runs.c.id == run.id, send_runs.c.status == RunStatus.PAUSED.value,
                send_runs.c.pause_transient.is_(True), send_runs.c.auto_retries == run.auto_retries).values(
                auto_retries=run.auto_retries + 1, pause_transient=False)).rowcount == 1

    def forget_retries(self, run_id: int) -> None:
        """Someone resumed the run: a later pause gets the scheduler's retries afresh."""
        with self.engine.begin() as conn:
            conn.execute(sa.update(send_runs).where(send_runs.c.id == run_id).values(auto_retries=0))

    def acquire(self, run_id: int, seconds: float) -> None:
        """Take (or renew) the lease on a run: only one process sends a run at a time."""
        now = utcnow()
        with self.engine.begin() as conn:
            taken = conn.execute(sa.update(send_runs).where(
                send_runs.c.id == run_id,
                sa.or_(send_runs.c.lease_owner.is_(None), send_runs.c.lease_owner == self.owner,
                       send_runs.c.lease_until < now)).values(
                lease_owner=self.owner, lease_until=now + dt.timedelta(seconds=seconds))).rowcount
            if not taken:
                owner, until = conn.execute(sa.select(send_runs.c.lease_owner, send_runs.c.lease_until)
                                            .where(send_runs.c.id == run_id)).one()
                if _dead_here(owner):  # a process of this machine that crashed: take over, once
                    taken = conn.execute(sa.update(send_runs).where(
                        send_runs.c.id == run_id, send_runs.c.lease_owner == owner).values(
                        lease_owner=self.owner, lease_until=now + dt.timedelta(seconds=seconds))).rowcount
                    if taken:
                        return
                raise RunBusy(f"run {run_id} is being sent by {owner} (lease until "
                              f"{until:%H:%M:%S} UTC); wait for it or stop it there", run_id=run_id)

    def release(self, run_id: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.update(send_runs).where(send_runs.c.id == run_id,
                                                    send_runs.c.lease_owner == self.owner)
                         .values(lease_owner=None, lease_until=None))

    def counts(self, run_id: int) -> dict[str, int]:
        with self.engine.connect() as conn:
            found = dict(conn.execute(sa.select(deliveries.c.state, sa.func.count())
                                      .where(deliveries.c.run_id == run_id)
                                      .group_by(deliveries.c.state)).all())
        return {s.value: found.get(s.value, 0) for s in State}

    def counts_by_variant(self, run_id: int) -> dict[str, dict[str, int]]:
        """`counts` for each variant of the run."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(deliveries.c.variant, deliveries.c.state, sa.func.count())
                                .where(deliveries.c.run_id == run_id)
                                .group_by(deliveries.c.variant, deliveries.c.state)).all()
        found: dict[str, dict[str, int]] = {}
        for variant, state, count in rows:
            found.setdefault(variant, {s.value: 0 for s in State})[state] = count
        return dict(sorted(found.items()))

    def variants(self, run_id: int) -> list[str]:
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(deliveries.c.variant).where(deliveries.c.run_id == run_id)
                                     .distinct().order_by(deliveries.c.variant)).scalars())

    # -- batches ---------------------------------------------------------------------------------

    def in_flight(self, run_id: int) -> list[Batch]:
        """Batches claimed before a stop and never answered. Those older than an idempotency key
        lives are marked failed: sending them again could deliver twice."""
        now = utcnow()
        batches: dict[str, Batch] = {}
        stale: list[int] = []
        with self.engine.begin() as conn:
            # The address and token the batch went out with, not the reader's current ones: the
            # same request again is what makes the idempotency key work.
            rows = conn.execute(
                sa.select(deliveries.c.id, deliveries.c.batch_key, deliveries.c.variant,
                          deliveries.c.updated_at, deliveries.c.email, readers.c.name, deliveries.c.token)
                .select_from(deliveries.outerjoin(readers, readers.c.id == deliveries.c.reader_id))
                .where(deliveries.c.run_id == run_id, deliveries.c.state == State.SENDING.value)
                .order_by(deliveries.c.id)).all()
            erased: list[int] = []
            for row in rows:
                if row.email is None:
                    erased.append(row.id)
                    continue
                if row.updated_at < now - KEY_LIFETIME:
                    stale.append(row.id)
                    continue
                batch = batches.setdefault(row.batch_key, Batch(row.batch_key, []))
                batch.recipients.append(Recipient(row.id, row.email, row.name, row.token, row.variant))
            if erased:
                conn.execute(sa.update(deliveries).where(deliveries.c.id.in_(erased)).values(
                    state=State.SKIPPED.value, reason="the reader was erased", updated_at=now))
            if stale:  # failed with its batch key kept: see `had_it`
                conn.execute(sa.update(deliveries).where(deliveries.c.id.in_(stale)).values(
                    state=State.FAILED.value, updated_at=now, email=None, token=None,
                    reason=f"in flight when the run stopped over 23 hours ago: it {MAYBE_DELIVERED}"))
        return list(batches.values())

    def claim(self, run_id: int, size: int) -> Batch | None:
        """The next queued deliveries whose readers are still active, marked `sending` and
        committed before anything is sent. Readers who left meanwhile are skipped."""
        skipped_total = 0
        while True:
            now = utcnow()
            with self.engine.begin() as conn:
                rows = conn.execute(
                    sa.select(deliveries.c.id, deliveries.c.variant, readers.c.email, readers.c.name,
                              readers.c.token, readers.c.status)
                    .select_from(deliveries.outerjoin(readers, readers.c.id == deliveries.c.reader_id))
                    .where(deliveries.c.run_id == run_id, deliveries.c.state == State.QUEUED.value)
                    .order_by(deliveries.c.id).limit(size)).all()
                if not rows:
                    return Batch("", [], skipped=skipped_total) if skipped_total else None
                skipped = [{"i": r.id, "reason": "the reader was erased" if r.status is None else
                            f"the reader is {r.status}"} for r in rows if r.status != Status.ACTIVE.value]
                if skipped:
                    conn.execute(sa.update(deliveries).where(deliveries.c.id == sa.bindparam("i")).values(
                        state=State.SKIPPED.value, reason=sa.bindparam("reason"), updated_at=now), skipped)
                skipped_total += len(skipped)
                active = [r for r in rows if r.status == Status.ACTIVE.value]
                if not active:
                    continue
                ids = [r.id for r in active]
                key = f"nl-{run_id}-{hashlib.sha256(','.join(map(str, ids)).encode()).hexdigest()[:24]}"
                # Every queued delivery up to the last one read is in this batch (the readers who
                # left were just marked skipped). Each keeps the address and token it goes out with.
                claimed = conn.execute(sa.update(deliveries).where(
                    deliveries.c.run_id == run_id, deliveries.c.state == State.QUEUED.value,
                    deliveries.c.id <= ids[-1]).values(
                    state=State.SENDING.value, batch_key=key, updated_at=now,
                    email=sa.select(readers.c.email).where(readers.c.id == deliveries.c.reader_id).scalar_subquery(),
                    token=sa.select(readers.c.token).where(readers.c.id == deliveries.c.reader_id).scalar_subquery(),
                )).rowcount
                if claimed != len(ids):  # another sender got here first: never send what it took
                    raise RunBusy(f"another process is sending run {run_id}; this one stops", run_id=run_id)
                return Batch(key, [Recipient(r.id, r.email, r.name, r.token, r.variant) for r in active],
                             skipped=skipped_total)

    def record(self, batch: Batch, outcomes: list) -> tuple[int, int]:
        """What the provider said, per message: (sent, failed). A temporary refusal goes back to
        the queue, and fails after MAX_ATTEMPTS."""
        now = utcnow()
        sent, failed, again = [], [], []
        for recipient, outcome in zip(batch.recipients, outcomes, strict=True):
            if outcome.ok:
                sent.append({"i": recipient.delivery_id, "m": outcome.message_id})
            elif outcome.retry:  # a message never tried does not use up an attempt
                again.append({"i": recipient.delivery_id, "r": outcome.error, "n": int(outcome.tried)})
            else:
                failed.append({"i": recipient.delivery_id, "r": outcome.error})
        with self.engine.begin() as conn:
            where = deliveries.c.id == sa.bindparam("i")
            answered = {"email": None, "token": None, "batch_key": None}  # no longer in flight
            if sent:  # the common case, and the hot path: straight to the driver
                update_many(conn, sa.update(deliveries).where(where).values(
                    state=State.SENT.value, message_id=sa.bindparam("m"), reason=None, email=None,
                    token=None, updated_at=sa.bindparam("now")), [dict(row, now=now) for row in sent])
            if failed:
                conn.execute(sa.update(deliveries).where(where).values(
                    state=State.FAILED.value, reason=sa.bindparam("r"), updated_at=now, **answered), failed)
            if again:
                conn.execute(sa.update(deliveries).where(where).values(
                    attempts=deliveries.c.attempts + sa.bindparam("n"), reason=sa.bindparam("r"),
                    updated_at=now, **answered,
                    state=sa.case((deliveries.c.attempts + sa.bindparam("n") >= MAX_ATTEMPTS, State.FAILED.value),
                                  else_=State.QUEUED.value)), again)
                failed_now = conn.execute(sa.select(sa.func.count()).where(
                    deliveries.c.id.in_([a["i"] for a in again]),
                    deliveries.c.state == State.FAILED.value)).scalar()
                return len(sent), len(failed) + failed_now
        return len(sent), len(failed)

    def requeue(self, batch: Batch) -> None:
        """Back to the queue: the provider refused the whole request, so nothing was delivered."""
        with self.engine.begin() as conn:
            conn.execute(sa.update(deliveries).where(
                deliveries.c.id.in_([r.delivery_id for r in batch.recipients]),
                deliveries.c.state == State.SENDING.value).values(
                state=State.QUEUED.value, batch_key=None, email=None, token=None, updated_at=utcnow()))

    def problems(self, run_id: int, limit: int = 1000, states: tuple[State, ...] = (State.FAILED, State.SKIPPED)
                 ) -> list[tuple[str | None, str, str | None]]:
        """(email, state, reason) of the deliveries that failed or were skipped (or `states`)."""
        with self.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(
                sa.select(readers.c.email, deliveries.c.state, deliveries.c.reason)
                .select_from(deliveries.outerjoin(readers, readers.c.id == deliveries.c.reader_id))
                .where(deliveries.c.run_id == run_id,
                       deliveries.c.state.in_([state.value for state in states]))
                .order_by(deliveries.c.id).limit(limit))]

    def cancel(self, run_id: int) -> Run:
        """End a run for good: what it delivered stays recorded, what is queued is skipped.

        A batch in flight (a crash mid-request) may or may not have reached the provider: it is
        marked failed with its batch key kept, so `had_it` counts it and no later run of the issue
        sends those readers a second copy; `newsletter runs RUN` lists them."""
        run = self.run(run_id)
        if run.status in (RunStatus.FINISHED, RunStatus.CANCELLED):
            raise SendError(f"run {run.id} is {run.status.value}; there is nothing to cancel", run_id=run.id)
        self.acquire(run.id, 60.0)  # refuses while another process is sending it
        now = utcnow()
        with self.engine.begin() as conn:
            conn.execute(sa.update(deliveries).where(
                deliveries.c.run_id == run.id, deliveries.c.state == State.QUEUED.value).values(
                state=State.SKIPPED.value, reason="the run was cancelled", updated_at=now))
            conn.execute(sa.update(deliveries).where(
                deliveries.c.run_id == run.id, deliveries.c.state == State.SENDING.value).values(
                state=State.FAILED.value, email=None, token=None, updated_at=now,
                reason=f"in flight when the run was cancelled: it {MAYBE_DELIVERED}"))
            conn.execute(sa.update(send_runs).where(send_runs.c.id == run.id).values(
                status=RunStatus.CANCELLED.value, reason="cancelled by the user", updated_at=now,
                finished_at=now, lease_owner=None, lease_until=None))
        return self.run(run.id)

    def had_it(self, issue: str) -> frozenset[int]:
        """Readers who got the issue from one of its runs, or may have: sent, or failed while in
        flight (the only failed deliveries that keep their batch key)."""
        maybe = sa.and_(deliveries.c.state == State.FAILED.value, deliveries.c.batch_key.is_not(None))
        with self.engine.connect() as conn:
            return frozenset(conn.execute(
                sa.select(deliveries.c.reader_id).distinct()
                .join(send_runs, send_runs.c.id == deliveries.c.run_id)
                .where(send_runs.c.issue == issue, deliveries.c.reader_id.is_not(None),
                       sa.or_(deliveries.c.state == State.SENT.value, maybe))).scalars())

    def unfinished(self, run_id: int) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(deliveries.c.id).where(
                deliveries.c.run_id == run_id,
                deliveries.c.state.in_([State.QUEUED.value, State.SENDING.value])).limit(1)).first() is not None


def _dead_here(owner: str | None) -> bool:
    host, _, pid = (owner or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _run(row) -> Run:
    return Run(id=row["id"], issue=row["issue"], digest_path=row["digest_path"],
               digest_sha256=row["digest_sha256"], settings_sha256=row["settings_sha256"],
               subject=row["subject"], provider=row["provider"],
               status=RunStatus(row["status"]), reason=row["reason"], created_at=row["created_at"],
               finished_at=row["finished_at"], updated_at=row["updated_at"],
               transient=bool(row["pause_transient"]), auto_retries=row["auto_retries"] or 0)
