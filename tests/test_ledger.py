"""The ledger's guards, with two processes at work on one database (SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import socket
import subprocess
import sys
import threading

import pytest
import sqlalchemy as sa

from newsletter.errors import SendError
from newsletter.ledger import Ledger, State
from newsletter.providers import Outcome
from newsletter.store import create_engine, deliveries, send_runs, utcnow
from newsletter.subscribers import Consent, ConsentMethod


@pytest.fixture
def run_of(subs):
    """A run of `n` readers, made as `open_run` makes it."""
    def make(n: int):
        ids = [subs.add(f"l{i:03d}@example.com", consent=Consent(ConsentMethod.FORM)).id for i in range(n)]
        ledger = Ledger(subs.engine)
        run = ledger.create_run(issue="issue-1", digest_path="issue-1.md", digest_sha256="d", settings_sha256="s",
                                subject="Issue 1", provider="outbox", recipients=[(i, "all") for i in ids])
        return ledger, run
    return make


@pytest.fixture
def elsewhere(db_url):
    """A ledger of another process: its own connections to the same database."""
    engine = create_engine(db_url)
    ledger = Ledger(engine)
    ledger.owner = "elsewhere:2"
    yield ledger
    engine.dispose()


def ids(batch) -> set[int]:
    return {r.delivery_id for r in batch.recipients} if batch else set()


def test_a_batch_another_process_claimed_meanwhile_is_never_taken_twice(subs, run_of, elsewhere):
    """Two senders read the same queued deliveries; the other marks them first. This one must
    not go on to send them (the lease normally prevents this; a lease lost must not deliver twice)."""
    ledger, run = run_of(10)
    theirs = []

    def between_read_and_mark(conn, cursor, statement, parameters, context, executemany):
        values = parameters.values() if isinstance(parameters, dict) else parameters
        marks = statement.lstrip().upper().startswith("UPDATE DELIVERIES") and State.SENDING.value in values
        if marks and not theirs:
            theirs.append(None)  # once
            other = threading.Thread(target=lambda: theirs.append(elsewhere.claim(run.id, 5)))
            other.start()
            other.join(timeout=30)  # a claim that waits for this one's lock goes on after it
            assert len(theirs) == 2, "the other process's claim did not finish in time"

    sa.event.listen(subs.engine, "before_cursor_execute", between_read_and_mark)
    try:
        try:
            mine = ledger.claim(run.id, 5)
        except SendError as e:
            assert f"another process is sending run {run.id}" in str(e)
            mine = None
    finally:
        sa.event.remove(subs.engine, "before_cursor_execute", between_read_and_mark)
    assert len(ids(theirs[1])) == 5
    assert not ids(mine) & ids(theirs[1]), "one batch taken by two senders: it would be sent twice"
    with subs.engine.connect() as conn:
        keys = conn.execute(sa.select(deliveries.c.batch_key).where(
            deliveries.c.id.in_(ids(theirs[1])))).scalars().all()
    assert set(keys) == {theirs[1].key}, "what the other process claimed stays its own"


def lease_owner(subs, run_id):
    with subs.engine.connect() as conn:
        return conn.execute(sa.select(send_runs.c.lease_owner).where(send_runs.c.id == run_id)).scalar()


def test_a_live_process_keeps_its_lease_and_a_dead_ones_is_taken_at_once(subs, run_of):
    ledger, run = run_of(3)
    holder = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        theirs = Ledger(subs.engine)
        theirs.owner = f"{socket.gethostname()}:{holder.pid}"  # another process on this machine
        theirs.acquire(run.id, 300)
        with pytest.raises(SendError, match=f"run {run.id} is being sent by {theirs.owner}"):
            ledger.acquire(run.id, 300)
        assert lease_owner(subs, run.id) == theirs.owner
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    ledger.acquire(run.id, 300)  # it died: its lease is taken over now, not in five minutes
    assert lease_owner(subs, run.id) == ledger.owner
    with pytest.raises(SendError, match="is being sent by"):
        theirs.acquire(run.id, 300)  # the new holder is alive


def age_in_flight(engine, run_id, hours):
    """Move what is in flight back in time, as if the process had stopped `hours` ago."""
    with engine.begin() as conn:
        conn.execute(sa.update(deliveries).where(deliveries.c.run_id == run_id,
                                                 deliveries.c.state == State.SENDING.value)
                     .values(updated_at=utcnow() - dt.timedelta(hours=hours)))


@pytest.mark.parametrize("hours", [22, 24])
def test_in_flight_longer_than_an_idempotency_key_lives_is_failed_not_resent(subs, run_of, hours):
    ledger, run = run_of(6)
    first, second = ledger.claim(run.id, 3), ledger.claim(run.id, 3)
    ledger.record(second, [Outcome(True, message_id="m")] * 3)
    age_in_flight(subs.engine, run.id, hours)  # the first batch never got an answer
    resumed = Ledger(subs.engine).in_flight(run.id)
    counts = ledger.counts(run.id)
    if hours < 23:  # the provider still knows the key: the same request again is delivered once
        assert [(b.key, ids(b)) for b in resumed] == [(first.key, ids(first))]
        assert counts["sending"] == 3 and counts["failed"] == 0
        return
    assert resumed == [], "sent again after its key expired, it could be delivered twice"
    assert counts == {"queued": 0, "sending": 0, "sent": 3, "failed": 3, "skipped": 0}
    reasons = {reason for _, state, reason in ledger.problems(run.id)}
    assert reasons == {"in flight when the run stopped over 23 hours ago: it may or may not have been "
                       "delivered; check the provider's log"}
