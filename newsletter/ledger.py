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
import time
from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from .errors import RunBusy, RunNotFound, RunUnfinished, SendError, StoreConflict
from .store import (UTCDateTime, deliveries, insert_many, reader_categories, readers, run_variants, run_workers,
                    send_batches, send_runs, update_many, utcnow)
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
    taken_over: bool = False  # claimed before by a process that stopped: the same request again
    run_id: int | None = None


@dataclass(frozen=True)
class RunVariant:
    """A variant of a run's email as the run keeps it: rendered, reader links still placeholders."""

    key: str
    subject: str
    html: str
    text: str
    size: int


@dataclass
class RunWorker:
    """A process that took part in a run."""

    owner: str  # host:pid
    sent: int
    failed: int
    requests: int
    started_at: dt.datetime
    seen_at: dt.datetime
    left_at: dt.datetime | None
    batches: int  # batches it holds a live lease on now


@dataclass(frozen=True)
class Audience:
    """Who a new run of an issue is for, as the database computes it: every active reader the
    issue has a story for, with the variant they get (see `send.variant_for`, which this follows
    rule for rule), less the readers an earlier run of the issue reached (`leave_out`: the
    issue's slug, or None to send to everyone).

    Each active reader's categories are read once, by one index range scan, into integers
    (`masks`): in the first, bit 0 says they chose any category at all, and bit i + 1 that they
    chose the issue's i-th; past BITS categories, the next integer goes on. The variant, whether
    they are due and the counts are then arithmetic on those integers. A join of readers with
    their categories grouped per reader costs a temporary index as large as the list."""

    BITS = 30  # categories per integer: its sums stay within a 32-bit integer on every database

    categories: tuple[str, ...]  # the categories the issue's stories carry
    open_story: bool  # some story is for everyone
    all_key: str  # the variant of readers with no categories
    none_key: str  # the variant of readers whose categories the issue has none of
    leave_out: str | None = None

    @cached_property
    def active(self):
        """Active readers: their id and their masks."""
        slugs = sorted(self.categories)  # sorted: the variant key lists them in order
        groups = [slugs[n:n + self.BITS] for n in range(0, len(slugs), self.BITS)] or [[]]
        masks = []
        for n, group in enumerate(groups):
            bits = sa.case({slug: 2 << i for i, slug in enumerate(group)}, value=reader_categories.c.category,
                           else_=0) if group else sa.literal(0)
            mask = sa.func.coalesce(sa.func.sum(bits), 0)
            if n == 0:
                mask = mask + sa.case((sa.func.count() > 0, 1), else_=0)
            masks.append(sa.select(mask).where(reader_categories.c.reader_id == readers.c.id)
                         .scalar_subquery().label(f"m{n}"))
        # OFFSET 0: each mask is computed once per reader, not again wherever it is used
        # (SQLite would fold the subquery into the query around it, PostgreSQL likewise).
        return (sa.select(readers.c.id, *masks).where(readers.c.status == Status.ACTIVE.value)
                .offset(0).subquery("active"))

    def _bits(self) -> list[tuple[str, int, int]]:
        """(slug, which mask, bit) for each of the issue's categories."""
        return [(slug, n // self.BITS, 2 << (n % self.BITS)) for n, slug in enumerate(sorted(self.categories))]

    def _chose_some(self):
        """The reader chose one of the issue's categories."""
        groups = len(self.active.c) - 1
        return sa.or_(self.active.c.m0 > 1, *[self.active.c[f"m{n}"] > 0 for n in range(1, groups)])

    def variant(self):
        kept = sa.literal("")
        for slug, mask, bit in self._bits():
            kept = kept + sa.case((self.active.c[f"m{mask}"].op("&")(bit) != 0, sa.literal(slug + "+")), else_=sa.literal(""))
        kept = sa.func.rtrim(kept, "+")  # slugs never end in "+"
        return sa.case((self.active.c.m0 == 0, sa.literal(self.all_key)), (self._chose_some(), kept),
                       else_=sa.literal(self.none_key))

    def wanted(self):
        """Active readers the issue has a story for."""
        return sa.or_(self.active.c.m0 == 0, self._chose_some(), sa.literal(self.open_story))

    def new(self):
        """Readers no earlier run of the issue reached, or may have (see `Ledger.had_it`)."""
        if self.leave_out is None:
            return sa.true()
        earlier = deliveries.alias("earlier")
        return ~sa.exists().where(
            earlier.c.reader_id == self.active.c.id,
            earlier.c.run_id.in_(sa.select(send_runs.c.id).where(send_runs.c.issue == self.leave_out)),
            sa.or_(earlier.c.state == State.SENT.value,
                   sa.and_(earlier.c.state == State.FAILED.value, earlier.c.batch_key.is_not(None))))

    def due(self):
        return sa.and_(self.wanted(), self.new())

    def variant_of(self, masks: tuple[int, ...]) -> str | None:
        """The variant of a reader with these masks (as `variant` computes it in SQL), or None
        if the issue has no story for them."""
        if not any(masks):
            return self.all_key
        kept = [slug for slug, mask, bit in self._bits() if masks[mask] & bit]
        if kept:
            return "+".join(kept)
        return self.none_key if self.open_story else None

    def counted(self):
        """Active readers per combination of masks, and whether an earlier run reached them."""
        masks = [c for c in self.active.c if c.name != "id"]
        reached = sa.case((self.new(), 0), else_=1).label("reached")
        return sa.select(*masks, reached, sa.func.count()).group_by(*masks, reached)


RUNS_CHANNEL = "newsletter_runs"  # PostgreSQL NOTIFY channel: a run started or resumed (workers.Wakeup)


def _announce(conn: sa.Connection, run_id: int) -> None:
    """Wake idle workers when this transaction commits: a run is being sent."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_notify(RUNS_CHANNEL, str(run_id))))


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Ledger:
    """The SQLAlchemy implementation of the store the send engine depends on."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.owner = _owner()

    # -- runs ------------------------------------------------------------------------------------

    def create_run(self, *, issue: str, digest_path: str, digest_sha256: str, settings_sha256: str,
                   subject: str, provider: str, audience: "Audience | None" = None,
                   recipients: Iterable[tuple[int, str]] = (),
                   variants: Callable[[dict[str, int]], Iterable[RunVariant]] | None = None) -> Run:
        """A run and one queued delivery per reader it is for, in one transaction: every reader of
        `audience`, copied by the database from the readers table in one statement (the list never
        passes through this process, however long it is), or the (reader id, variant) pairs of
        `recipients`.

        `variants` is given how many of the run's readers, as copied, get each variant, and gives
        back each of those variants rendered; the run keeps them (`run_variants`), committed with
        it, so that no process ever sends it without them."""
        now = utcnow()
        try:
            with self.engine.begin() as conn:
                run_id = conn.execute(sa.insert(send_runs).values(
                    issue=issue, digest_path=digest_path, digest_sha256=digest_sha256,
                    settings_sha256=settings_sha256, subject=subject, provider=provider,
                    status=RunStatus.SENDING.value, created_at=now, updated_at=now)).inserted_primary_key[0]
                _announce(conn, run_id)
                if audience is not None:
                    reader_id = audience.active.c.id
                    rows = (sa.select(sa.literal(run_id), reader_id, audience.variant(), sa.literal(State.QUEUED.value),
                                      sa.literal(0), sa.literal(now, UTCDateTime()))
                            .where(audience.due()).order_by(reader_id))
                    conn.execute(sa.insert(deliveries).from_select(
                        ["run_id", "reader_id", "variant", "state", "attempts", "updated_at"], rows))
                chunk: list[dict] = []
                for reader, variant in recipients:
                    chunk.append({"run_id": run_id, "reader_id": reader, "variant": variant,
                                  "state": State.QUEUED.value, "attempts": 0, "updated_at": now})
                    if len(chunk) == 5000:
                        insert_many(conn, deliveries, chunk)
                        chunk = []
                insert_many(conn, deliveries, chunk)
                if variants is not None:
                    sizes = dict(sorted(conn.execute(sa.select(deliveries.c.variant, sa.func.count())
                                                     .where(deliveries.c.run_id == run_id)
                                                     .group_by(deliveries.c.variant)).all()))
                    kept = set()
                    for variant in variants(sizes):  # one at a time: a run may have many
                        conn.execute(sa.insert(run_variants).values(
                            run_id=run_id, key=variant.key, subject=variant.subject, html=variant.html,
                            text=variant.text, size=variant.size))
                        kept.add(variant.key)
                    if kept != set(sizes):
                        raise SendError(f"run of {issue}: variants {sorted(set(sizes) - kept)} were not rendered")
        except StoreConflict:  # the unique index on unfinished runs of an issue
            other = [r.id for r in self.runs(issue) if r.status in (RunStatus.SENDING, RunStatus.PAUSED)]
            raise RunUnfinished(f"another run of {issue} was started at the same moment; see "
                                "`newsletter runs`", run_id=other[-1] if other else None) from None
        return self.run(run_id)

    def count_audience(self, audience: "Audience") -> tuple[dict[str, int], int, int]:
        """Readers per variant, active readers none of whose categories the issue has, and due
        readers left out because an earlier run of the issue reached them: counted by the
        database, as `create_run` would copy them now."""
        per_variant: dict[str, int] = {}
        not_due = had_it = 0
        with self.engine.connect() as conn:  # one pass over the readers, grouped by integers
            for *masks, reached, count in conn.execute(audience.counted()):
                variant = audience.variant_of(tuple(masks))
                if variant is None:
                    not_due += count
                elif reached:
                    had_it += count
                else:
                    per_variant[variant] = per_variant.get(variant, 0) + count
        return dict(sorted(per_variant.items())), not_due, had_it

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
        if status == RunStatus.SENDING:  # started or resumed: a streak of failures starts afresh
            values["failures"] = 0
        with self.engine.begin() as conn:
            conn.execute(sa.update(send_runs).where(send_runs.c.id == run_id).values(**values))
            if status == RunStatus.SENDING:
                _announce(conn, run_id)

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

    def run_variants(self, run_id: int) -> dict[str, RunVariant]:
        """The variants the run keeps, by key; none for a run created before runs kept them."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(run_variants.c.key, run_variants.c.subject, run_variants.c.html,
                                          run_variants.c.text, run_variants.c.size)
                                .where(run_variants.c.run_id == run_id).order_by(run_variants.c.key))
            return {row.key: RunVariant(*row) for row in rows}

    def variants(self, run_id: int) -> list[str]:
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(deliveries.c.variant).where(deliveries.c.run_id == run_id)
                                     .distinct().order_by(deliveries.c.variant)).scalars())

    # -- batches ---------------------------------------------------------------------------------
    #
    # A batch is claimed in one transaction: its deliveries become `sending` under its key and a
    # `send_batches` row leases it to this process until `lease_until`, all committed before the
    # provider sees it. On PostgreSQL the queued rows are read `FOR UPDATE SKIP LOCKED`, so
    # processes claiming at the same moment each get rows of their own, without waiting for one
    # another; SQLite has one writer at a time (and one sender per run: see `acquire`). A batch
    # whose lease ran out belongs to a process that died mid-request: the next claim takes it
    # over and sends it again as it was, under the same idempotency key.

    def claim(self, run_id: int, size: int, lease: float = 300.0) -> Batch | None:
        """The next batch to send: first one whose lease ran out, else the next queued deliveries
        whose readers are still active (readers who left meanwhile are skipped). None when there is
        nothing to claim now; other processes may still hold batches (see `unfinished`)."""
        skipped_total = 0
        while True:
            now = utcnow()
            until = now + dt.timedelta(seconds=lease)
            with self.engine.begin() as conn:
                taken = self._take_over(conn, run_id, now, until)
                if taken is not None:
                    taken.skipped, taken.run_id = skipped_total, run_id
                    return taken
                rows = conn.execute(
                    sa.select(deliveries.c.id, deliveries.c.variant, deliveries.c.reader_id)
                    .where(deliveries.c.run_id == run_id, deliveries.c.state == State.QUEUED.value)
                    .order_by(deliveries.c.id).limit(size)
                    .with_for_update(skip_locked=True)).all()
                if not rows:
                    return Batch("", [], skipped=skipped_total, run_id=run_id) if skipped_total else None
                found = {r.id: r for r in conn.execute(
                    sa.select(readers.c.id, readers.c.email, readers.c.name, readers.c.token, readers.c.status)
                    .where(readers.c.id.in_([r.reader_id for r in rows if r.reader_id is not None])))}
                active, skipped = [], []
                for row in rows:
                    reader = found.get(row.reader_id)
                    if reader is not None and reader.status == Status.ACTIVE.value:
                        active.append((row, reader))
                    else:
                        skipped.append({"delivery": row.id, "why": "the reader was erased" if reader is None
                                        else f"the reader is {reader.status}"})
                if skipped:
                    conn.execute(sa.update(deliveries).where(deliveries.c.id == sa.bindparam("delivery")).values(
                        state=State.SKIPPED.value, reason=sa.bindparam("why"), updated_at=now), skipped)
                skipped_total += len(skipped)
                if not active:
                    continue
                ids = [row.id for row, _ in active]
                key = f"nl-{run_id}-{hashlib.sha256(','.join(map(str, ids)).encode()).hexdigest()[:24]}"
                # Each delivery keeps the address and token it goes out with: sent again after a
                # stop, the batch must be the very same request.
                claimed = conn.execute(sa.update(deliveries).where(
                    deliveries.c.id.in_(ids), deliveries.c.state == State.QUEUED.value).values(
                    state=State.SENDING.value, batch_key=key, updated_at=now,
                    email=sa.select(readers.c.email).where(readers.c.id == deliveries.c.reader_id).scalar_subquery(),
                    token=sa.select(readers.c.token).where(readers.c.id == deliveries.c.reader_id).scalar_subquery(),
                )).rowcount
                if claimed != len(ids):  # another sender got here first: never send what it took
                    raise RunBusy(f"another process is sending run {run_id}; this one stops", run_id=run_id)
                conn.execute(sa.insert(send_batches).values(key=key, run_id=run_id, owner=self.owner,
                                                            lease_until=until, claimed_at=now))
                return Batch(key, [Recipient(row.id, reader.email, reader.name, reader.token, row.variant)
                                   for row, reader in active], skipped=skipped_total, run_id=run_id)

    def _take_over(self, conn: sa.Connection, run_id: int, now: dt.datetime, until: dt.datetime) -> Batch | None:
        """A batch of the run whose lease ran out, leased to this process now, as it was sent.
        Those claimed longer ago than an idempotency key lives are marked failed instead:
        sending them again could deliver twice."""
        while True:
            row = conn.execute(sa.select(send_batches.c.key, send_batches.c.claimed_at).where(
                send_batches.c.run_id == run_id, send_batches.c.lease_until < now)
                .order_by(send_batches.c.claimed_at).limit(1).with_for_update(skip_locked=True)).first()
            if row is None:
                return None
            in_batch = sa.and_(deliveries.c.batch_key == row.key, deliveries.c.state == State.SENDING.value)
            if row.claimed_at < now - KEY_LIFETIME:  # failed with its batch key kept: see `had_it`
                conn.execute(sa.update(deliveries).where(in_batch).values(
                    state=State.FAILED.value, updated_at=now, email=None, token=None,
                    reason=f"in flight when the run stopped over 23 hours ago: it {MAYBE_DELIVERED}"))
                conn.execute(sa.delete(send_batches).where(send_batches.c.key == row.key))
                continue
            # The address and token the batch went out with, not the reader's current ones: the
            # same request again is what makes the idempotency key work.
            members = conn.execute(
                sa.select(deliveries.c.id, deliveries.c.variant, deliveries.c.email, readers.c.name,
                          deliveries.c.token)
                .select_from(deliveries.outerjoin(readers, readers.c.id == deliveries.c.reader_id))
                .where(in_batch).order_by(deliveries.c.id)).all()
            erased = [m.id for m in members if m.email is None]
            if erased:
                conn.execute(sa.update(deliveries).where(deliveries.c.id.in_(erased)).values(
                    state=State.SKIPPED.value, reason="the reader was erased", updated_at=now))
            recipients = [Recipient(m.id, m.email, m.name, m.token, m.variant) for m in members if m.email]
            if not recipients:
                conn.execute(sa.delete(send_batches).where(send_batches.c.key == row.key))
                continue
            conn.execute(sa.update(send_batches).where(send_batches.c.key == row.key).values(
                owner=self.owner, lease_until=until))
            return Batch(row.key, recipients, taken_over=True)

    def expire_batches(self, run_id: int, *, everyone: bool = False) -> int:
        """End the leases of batches held by processes of this machine that are no longer
        running (all of the run's batches with `everyone`, for a sender that holds the run), so the
        next claim takes them over at once instead of when their lease runs out."""
        with self.engine.begin() as conn:
            owners = conn.execute(sa.select(send_batches.c.owner).distinct()
                                  .where(send_batches.c.run_id == run_id)).scalars().all()
            gone = [o for o in owners if everyone or _dead_here(o)]
            if not gone:
                return 0
            return conn.execute(sa.update(send_batches).where(
                send_batches.c.run_id == run_id, send_batches.c.owner.in_(gone)).values(
                lease_until=utcnow() - dt.timedelta(seconds=1))).rowcount

    def give_up(self, run_id: int) -> None:
        """End the leases this process holds on the run's batches: it stops without answering them."""
        with self.engine.begin() as conn:
            conn.execute(sa.update(send_batches).where(
                send_batches.c.run_id == run_id, send_batches.c.owner == self.owner).values(
                lease_until=utcnow() - dt.timedelta(seconds=1)))

    def renew(self, batch: Batch, lease: float) -> bool:
        """Keep the lease on `batch` while it is retried; False if another process took it over."""
        with self.engine.begin() as conn:
            return conn.execute(sa.update(send_batches).where(
                send_batches.c.key == batch.key, send_batches.c.owner == self.owner).values(
                lease_until=utcnow() + dt.timedelta(seconds=lease))).rowcount == 1

    def record(self, batch: Batch, outcomes: list) -> tuple[int, int]:
        """What the provider said, per message: (sent, failed). A temporary refusal goes back to
        the queue, and fails after MAX_ATTEMPTS. A batch another process already recorded (it
        took the batch over and got the same answer) changes nothing."""
        now = utcnow()
        sent, failed, again = [], [], []
        for recipient, outcome in zip(batch.recipients, outcomes, strict=True):
            if outcome.ok:
                sent.append({"delivery": recipient.delivery_id, "provider_id": outcome.message_id})
            elif outcome.retry:  # a message never tried does not use up an attempt
                again.append({"delivery": recipient.delivery_id, "why": outcome.error, "tries": int(outcome.tried)})
            else:
                failed.append({"delivery": recipient.delivery_id, "why": outcome.error})
        with self.engine.begin() as conn:
            if not self._answered(conn, batch):
                return 0, 0
            where = deliveries.c.id == sa.bindparam("delivery")
            answered = {"email": None, "token": None, "batch_key": None}  # no longer in flight
            if sent:  # the common case, and the hot path: straight to the driver
                update_many(conn, sa.update(deliveries).where(where).values(
                    state=State.SENT.value, message_id=sa.bindparam("provider_id"), reason=None, email=None,
                    token=None, updated_at=sa.bindparam("now")), [dict(row, now=now) for row in sent])
            if failed:
                conn.execute(sa.update(deliveries).where(where).values(
                    state=State.FAILED.value, reason=sa.bindparam("why"), updated_at=now, **answered), failed)
            failed_now = 0
            if again:
                tries = sa.bindparam("tries")
                conn.execute(sa.update(deliveries).where(where).values(
                    attempts=deliveries.c.attempts + tries, reason=sa.bindparam("why"),
                    updated_at=now, **answered,
                    state=sa.case((deliveries.c.attempts + tries >= MAX_ATTEMPTS, State.FAILED.value),
                                  else_=State.QUEUED.value)), again)
                failed_now = conn.execute(sa.select(sa.func.count()).where(
                    deliveries.c.id.in_([a["delivery"] for a in again]),
                    deliveries.c.state == State.FAILED.value)).scalar()
            self._count(conn, batch.run_id, sent=len(sent), failed=len(failed) + failed_now)
        return len(sent), len(failed) + failed_now

    def requeue(self, batch: Batch) -> None:
        """Back to the queue: the provider refused the whole request, so nothing was delivered."""
        with self.engine.begin() as conn:
            if not self._answered(conn, batch):
                return
            conn.execute(sa.update(deliveries).where(
                deliveries.c.id.in_([r.delivery_id for r in batch.recipients]),
                deliveries.c.state == State.SENDING.value).values(
                state=State.QUEUED.value, batch_key=None, email=None, token=None, updated_at=utcnow()))

    @staticmethod
    def _answered(conn: sa.Connection, batch: Batch) -> bool:
        """Drop the batch's lease row; False if it was gone: another process answered it first.
        The delete locks the row, so of two processes answering one batch only one goes on."""
        return conn.execute(sa.delete(send_batches).where(send_batches.c.key == batch.key)).rowcount == 1

    # -- who takes part in a run -------------------------------------------------------------------

    def join(self, run_id: int) -> None:
        """This process starts (or goes on) working on the run: `newsletter runs RUN` shows it."""
        now = utcnow()
        with self.engine.begin() as conn:
            if not conn.execute(sa.update(run_workers).where(
                    run_workers.c.run_id == run_id, run_workers.c.owner == self.owner).values(
                    seen_at=now, left_at=None)).rowcount:
                conn.execute(sa.insert(run_workers).values(run_id=run_id, owner=self.owner, sent=0, failed=0,
                                                           requests=0, started_at=now, seen_at=now))

    def leave(self, run_id: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.update(run_workers).where(
                run_workers.c.run_id == run_id, run_workers.c.owner == self.owner).values(left_at=utcnow()))

    def _count(self, conn: sa.Connection, run_id: int, *, sent: int = 0, failed: int = 0) -> None:
        conn.execute(sa.update(run_workers).where(
            run_workers.c.run_id == run_id, run_workers.c.owner == self.owner).values(
            sent=run_workers.c.sent + sent, failed=run_workers.c.failed + failed,
            requests=run_workers.c.requests + 1, seen_at=utcnow()))

    def workers(self, run_id: int) -> list[RunWorker]:
        """Every process that took part in the run, with what it sent and whether it still works."""
        now = utcnow()
        with self.engine.connect() as conn:
            holding = dict(conn.execute(sa.select(send_batches.c.owner, sa.func.count())
                                        .where(send_batches.c.run_id == run_id, send_batches.c.lease_until >= now)
                                        .group_by(send_batches.c.owner)).all())
            rows = conn.execute(sa.select(run_workers).where(run_workers.c.run_id == run_id)
                                .order_by(run_workers.c.started_at)).mappings().all()
        return [RunWorker(owner=r["owner"], sent=r["sent"], failed=r["failed"], requests=r["requests"],
                          started_at=r["started_at"], seen_at=r["seen_at"], left_at=r["left_at"],
                          batches=holding.get(r["owner"], 0)) for r in rows]

    # -- what every process sending a run shares -----------------------------------------------------

    def pause(self, run_id: int, reason: str, *, transient: bool = False) -> bool:
        """Pause a run that is being sent, for every process sending it: each stops after its
        batch in flight. False if it was not sending (already paused, finished, ...)."""
        with self.engine.begin() as conn:
            return conn.execute(sa.update(send_runs).where(
                send_runs.c.id == run_id, send_runs.c.status == RunStatus.SENDING.value).values(
                status=RunStatus.PAUSED.value, reason=reason, pause_transient=transient,
                updated_at=utcnow())).rowcount == 1

    def failed_request(self, run_id: int) -> int:
        """Count a failed request in the run's streak (shared by all its senders): the streak now."""
        with self.engine.begin() as conn:
            conn.execute(sa.update(send_runs).where(send_runs.c.id == run_id).values(
                failures=send_runs.c.failures + 1))
            return conn.execute(sa.select(send_runs.c.failures).where(send_runs.c.id == run_id)).scalar_one()

    def request_answered(self, run_id: int) -> None:
        """A request got its answer: the streak of failed ones is over."""
        with self.engine.begin() as conn:
            conn.execute(sa.update(send_runs).where(send_runs.c.id == run_id, send_runs.c.failures > 0)
                         .values(failures=0))

    def finish(self, run_id: int) -> bool:
        """Mark the run finished if it is sending and nothing is left to send; True if it is now."""
        now = utcnow()
        left = sa.exists().where(deliveries.c.run_id == run_id,
                                 deliveries.c.state.in_([State.QUEUED.value, State.SENDING.value]))
        with self.engine.begin() as conn:
            conn.execute(sa.update(send_runs).where(
                send_runs.c.id == run_id, send_runs.c.status == RunStatus.SENDING.value, ~left).values(
                status=RunStatus.FINISHED.value, reason=None, updated_at=now, finished_at=now))
            return conn.execute(sa.select(send_runs.c.status).where(send_runs.c.id == run_id)).scalar() \
                == RunStatus.FINISHED.value

    def sending_runs(self) -> list[Run]:
        """Runs being sent, oldest first: what a worker looks for."""
        with self.engine.connect() as conn:
            return [_run(r) for r in conn.execute(sa.select(send_runs).where(
                send_runs.c.status == RunStatus.SENDING.value).order_by(send_runs.c.id)).mappings()]

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

    def cancel(self, run_id: int, *, settle: float = 0.0) -> Run:
        """End a run for good: what it delivered stays recorded, what is queued is skipped.

        A batch in flight (a crash mid-request) may or may not have reached the provider: it is
        marked failed with its batch key kept, so `had_it` counts it and no later run of the issue
        sends those readers a second copy; `newsletter runs RUN` lists them.

        `settle`, on PostgreSQL (where workers send a run without holding it): first pause the run,
        so that every process sending it stops after its batch in flight, and wait up to `settle`
        seconds for those batches to be answered, so that what they delivered is recorded as
        sent instead of as maybe delivered. (On SQLite the process sending a run holds it, and
        the cancel is refused while it does.)"""
        run = self.run(run_id)
        if run.status in (RunStatus.FINISHED, RunStatus.CANCELLED):
            raise SendError(f"run {run.id} is {run.status.value}; there is nothing to cancel", run_id=run.id)
        if settle > 0 and self.engine.dialect.name == "postgresql":
            self.pause(run.id, "being cancelled")
            deadline = time.monotonic() + settle
            while self.in_flight(run.id) and time.monotonic() < deadline:
                time.sleep(0.1)  # the workers' answers are recorded by them, in the database
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
            # A worker still sending one of them finds its batch gone and records nothing.
            conn.execute(sa.delete(send_batches).where(send_batches.c.run_id == run.id))
            conn.execute(sa.update(send_runs).where(send_runs.c.id == run.id).values(
                status=RunStatus.CANCELLED.value, reason="cancelled by the user", updated_at=now,
                finished_at=now, lease_owner=None, lease_until=None))
        return self.run(run.id)

    def in_flight(self, run_id: int) -> int:
        """The run's batches leased to a process now: sent, their answer not yet recorded."""
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(send_batches).where(
                send_batches.c.run_id == run_id, send_batches.c.lease_until >= utcnow())).scalar_one()

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
    """Whether `owner` (host:pid, or host:pid/n for a process's nth sender) is a process of this
    machine that is no longer running."""
    host, _, pid = (owner or "").partition("/")[0].rpartition(":")
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
