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
from newsletter.ledger import Audience, Ledger, State
from newsletter.providers import Outcome
from newsletter.store import create_engine, deliveries, send_batches, send_runs, utcnow
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
    then = utcnow() - dt.timedelta(hours=hours)
    with engine.begin() as conn:
        conn.execute(sa.update(send_batches).where(send_batches.c.run_id == run_id)
                     .values(claimed_at=then, lease_until=then))


@pytest.mark.parametrize("hours", [22, 24])
def test_in_flight_longer_than_an_idempotency_key_lives_is_failed_not_resent(subs, run_of, hours):
    ledger, run = run_of(6)
    first, second = ledger.claim(run.id, 3), ledger.claim(run.id, 3)
    ledger.record(second, [Outcome(True, message_id="m")] * 3)
    age_in_flight(subs.engine, run.id, hours)  # the first batch never got an answer
    taken = Ledger(subs.engine).claim(run.id, 3)
    resumed = [taken] if taken else []
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


def lease_of(subs, key):
    with subs.engine.connect() as conn:
        return conn.execute(sa.select(send_batches.c.owner, send_batches.c.lease_until)
                            .where(send_batches.c.key == key)).one()


def test_a_batch_leased_elsewhere_is_taken_over_only_when_its_lease_runs_out(subs, run_of, elsewhere):
    ledger, run = run_of(6)
    theirs = elsewhere.claim(run.id, 3, lease=300)  # a live process on another machine
    subs.rotate_token(theirs.recipients[0].email)  # the reader's links change after it went out
    mine = ledger.claim(run.id, 3)
    assert ids(mine).isdisjoint(ids(theirs))
    ledger.record(mine, [Outcome(True, message_id="m")] * 3)
    assert ledger.claim(run.id, 3) is None and ledger.unfinished(run.id), "theirs is still leased"
    assert ledger.expire_batches(run.id) == 0, "a process of another machine is never taken for dead"
    with subs.engine.begin() as conn:  # its process died: the lease runs out
        conn.execute(sa.update(send_batches).where(send_batches.c.key == theirs.key)
                     .values(lease_until=utcnow() - dt.timedelta(seconds=1)))
    taken = ledger.claim(run.id, 3)
    assert taken.taken_over and taken.key == theirs.key
    assert taken.recipients == theirs.recipients, "the same request: the address and token it went out with"
    assert lease_of(subs, taken.key).owner == ledger.owner
    assert not elsewhere.renew(theirs, 300), "the process that lost the batch learns so"
    assert ledger.renew(taken, 300)


def test_a_batch_answered_by_two_processes_is_recorded_once(subs, run_of, elsewhere):
    ledger, run = run_of(3)
    batch = ledger.claim(run.id, 3)
    with subs.engine.begin() as conn:
        conn.execute(sa.update(send_batches).values(lease_until=utcnow() - dt.timedelta(seconds=1)))
    again = elsewhere.claim(run.id, 3)  # taken over: both processes hold an answer to one request
    assert again.key == batch.key
    assert elsewhere.record(again, [Outcome(True, message_id="m")] * 3) == (3, 0)
    assert ledger.record(batch, [Outcome(False, error="x", retry=True)] * 3) == (0, 0)
    assert ledger.counts(run.id)["sent"] == 3 and ledger.counts(run.id)["queued"] == 0, \
        "a late answer must not send the batch's readers back to the queue"
    assert [(w.owner, w.sent) for w in ledger.workers(run.id)] == [], "neither joined the run"


def test_a_dead_process_of_this_machine_loses_its_batches_at_once(subs, run_of):
    ledger, run = run_of(3)
    holder = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    theirs = Ledger(subs.engine)
    theirs.owner = f"{socket.gethostname()}:{holder.pid}"
    try:
        batch = theirs.claim(run.id, 3, lease=300)
        assert ledger.expire_batches(run.id) == 0, "alive"
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert ledger.expire_batches(run.id) == 1
    assert ledger.claim(run.id, 3).key == batch.key


def test_pausing_a_run_is_seen_by_every_process_and_the_failure_streak_is_shared(subs, run_of, elsewhere):
    ledger, run = run_of(3)
    assert [ledger.failed_request(run.id), elsewhere.failed_request(run.id)] == [1, 2]
    elsewhere.request_answered(run.id)
    assert ledger.failed_request(run.id) == 1
    assert elsewhere.pause(run.id, "quota exceeded", transient=True)
    assert not ledger.pause(run.id, "paused by the user"), "the first pause's reason stays"
    paused = ledger.run(run.id)
    assert (paused.status.value, paused.reason, paused.transient) == ("paused", "quota exceeded", True)


def test_the_database_gives_every_reader_the_variant_send_gives_them(db_url):
    """`Audience` computes in SQL, from per-reader bit masks, what `send.variant_for` decides in
    Python: the same variant for every reader, the same readers left out, whatever the issue's
    categories (more than one mask's worth of them too) and whether a story is for everyone."""
    import random

    from newsletter.config import Category
    from newsletter.send import ALL, variant_for
    from newsletter.subscribers import Status, Subscribers

    pick = random.Random(12)
    slugs = [f"c{n:02d}" for n in range(70)]
    subs = Subscribers.open(db_url, [Category(s, s.upper()) for s in slugs])
    readers = {}
    for n in range(240):
        chosen = pick.sample(slugs, pick.choice([0, 0, 1, 2, 3, 8, 40]))
        status = Status.ACTIVE if n % 7 else Status.UNSUBSCRIBED
        reader = subs.add(f"r{n}@example.com", categories=chosen, status=status,
                          consent=Consent(ConsentMethod.FORM))
        readers[reader.id] = (set(chosen), status)
    ledger = Ledger(subs.engine)
    for size in (0, 1, 4, 29, 30, 31, 65):
        for open_story in (False, True):
            issue = set(pick.sample(slugs, size))
            audience = Audience(tuple(sorted(issue)), open_story, all_key=ALL, none_key="none")
            expected = {rid: variant_for(cats, issue, open_story) for rid, (cats, status) in readers.items()
                        if status == Status.ACTIVE}
            due = {rid: v for rid, v in expected.items() if v is not None}
            per_variant, not_due, had_it = ledger.count_audience(audience)
            counted = {}
            for v in due.values():
                counted[v] = counted.get(v, 0) + 1
            assert (per_variant, not_due, had_it) == (dict(sorted(counted.items())), len(expected) - len(due), 0)
            run = ledger.create_run(issue=f"i{size}{open_story}", digest_path="i.md", digest_sha256="d",
                                    settings_sha256="s", subject="I", provider="outbox", audience=audience)
            with subs.engine.connect() as conn:
                copied = dict(conn.execute(sa.select(deliveries.c.reader_id, deliveries.c.variant)
                                           .where(deliveries.c.run_id == run.id)).all())
            assert copied == due, (size, open_story)
    subs.close()
