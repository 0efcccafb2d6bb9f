"""A way out for a stuck or unwanted run: `newsletter runs cancel`, and what a later send does."""

from __future__ import annotations

import email
import io

import pytest
import sqlalchemy as sa

from newsletter.digest import load_digest
from newsletter.errors import SendError
from newsletter.ledger import Ledger, RunStatus
from newsletter.providers import Outcome
from newsletter.send import open_run, plan
from newsletter.store import deliveries
from newsletter.subscribers import Consent, ConsentMethod, Subscribers

from .conftest import EXAMPLE


def add_readers(subs, n: int) -> list[str]:
    emails = [f"r{i:02d}@example.com" for i in range(n)]
    for email in emails:
        subs.add(email, consent=Consent(ConsentMethod.CLI))
    return emails


def half_sent(subs, settings, digest_path=EXAMPLE):
    """A run of 10 readers: batch 1 (3) delivered, batch 2 (3) in flight when the process died, 4 queued."""
    digest = load_digest(digest_path, settings)
    ledger = Ledger(subs.engine)
    run, _, _ = open_run(ledger, digest, subs, "outbox", settings)
    first = ledger.claim(run.id, 3)
    ledger.record(first, [Outcome(True, message_id=f"m{r.delivery_id}") for r in first.recipients])
    in_flight = ledger.claim(run.id, 3)
    return digest, ledger, run, [r.email for r in first.recipients], [r.email for r in in_flight.recipients]


def readers_of(subs, run_id) -> set[int]:
    """The readers a run's snapshot holds."""
    with subs.engine.connect() as conn:
        return set(conn.execute(sa.select(deliveries.c.reader_id).where(deliveries.c.run_id == run_id)).scalars())


def emails_of(subs, reader_ids) -> set[str]:
    return {r.email for r in subs.iter_readers() if r.id in reader_ids}


def test_cancel_records_what_was_delivered_and_a_new_run_sends_the_rest(subs, settings):
    emails = add_readers(subs, 10)
    digest, ledger, run, delivered, in_flight = half_sent(subs, settings)

    with pytest.raises(SendError, match=r"run 1 of .* is sending.*`newsletter runs cancel 1`"):
        open_run(ledger, digest, subs, "outbox", settings)
    cancelled = ledger.cancel(run.id)
    assert cancelled.status == RunStatus.CANCELLED
    assert ledger.counts(run.id) == {"queued": 0, "sending": 0, "sent": 3, "failed": 3, "skipped": 4}
    reasons = {reason for _, state, reason in ledger.problems(run.id) if state == "failed"}
    assert reasons == {"in flight when the run was cancelled: it may or may not have been delivered; "
                       "check the provider's log"}

    # The delivered and the maybe-delivered are left out of the next run; nobody else is.
    had_it = ledger.had_it(digest.slug)
    assert emails_of(subs, had_it) == set(delivered) | set(in_flight)
    second, due, _ = open_run(ledger, digest, subs, "outbox", settings)
    assert emails_of(subs, readers_of(subs, second.id)) == set(emails) - emails_of(subs, had_it)
    assert due.total == 4 and due.had_it == 6
    with pytest.raises(SendError, match="run 2 of .* is sending"):
        open_run(ledger, digest, subs, "outbox", settings, again=True)

    # --again, once that run is over, sends to everyone.
    ledger.cancel(second.id)
    third, due, _ = open_run(ledger, digest, subs, "outbox", settings, again=True)
    assert due.total == 10 and len(readers_of(subs, third.id)) == 10


def test_a_finished_or_cancelled_run_cannot_be_cancelled(subs, settings):
    add_readers(subs, 4)
    digest, ledger, run, _, _ = half_sent(subs, settings)
    ledger.cancel(run.id)
    with pytest.raises(SendError, match="run 1 is cancelled; there is nothing to cancel"):
        ledger.cancel(run.id)


def test_cancel_waits_for_a_process_that_is_sending(subs, settings):
    add_readers(subs, 8)
    digest, ledger, run, _, _ = half_sent(subs, settings)
    elsewhere = Ledger(subs.engine)
    elsewhere.owner = "another-host:4242"  # a live sender on another machine holds the lease
    elsewhere.acquire(run.id, 300)
    with pytest.raises(SendError, match="run 1 is being sent by another-host:4242"):
        ledger.cancel(run.id)
    assert ledger.run(run.id).status == RunStatus.SENDING
    assert ledger.counts(run.id)["queued"] == 2


def test_plan_leaves_out_who_had_it(subs, settings):
    add_readers(subs, 5)
    digest = load_digest(EXAMPLE, settings)
    ledger = Ledger(subs.engine)
    run, due, _ = open_run(ledger, digest, subs, "outbox", settings)
    batch = ledger.claim(run.id, 1)
    ledger.record(batch, [Outcome(True, message_id="m")])
    ledger.cancel(run.id)
    left_out = plan(digest, ledger, leave_out=True)
    assert (left_out.total, left_out.had_it) == (4, 1)
    assert plan(digest, ledger).total == 5, "with --again: everyone"


@pytest.fixture
def cli(run, monkeypatch, tmp_path, db_url, session_settings):
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", db_url)
    monkeypatch.setenv("NEWSLETTER_OUTBOX_DIR", str(tmp_path / "outbox"))
    return run


def test_a_stuck_run_has_a_way_out(cli, db_url, settings, tmp_path, monkeypatch):
    """The trap the issue describes: a run that cannot finish, a fixed file, and no way on."""
    digest_path = tmp_path / "issue.md"
    digest_path.write_text(EXAMPLE.read_text())
    subs = Subscribers.open(db_url, settings.categories)
    emails = add_readers(subs, 10)
    _, _, run, delivered, in_flight = half_sent(subs, settings, digest_path)
    subs.close()
    digest_path.write_text(EXAMPLE.read_text().replace("Lemma-7B checks", "Lemma-7B now checks"))

    result = cli("send", digest_path, "--yes")
    assert result.code == 1 and "`newsletter runs cancel 1`" in result.err
    result = cli("resume", "1", "--yes")
    assert result.code == 1 and "changed since run 1 started" in result.err
    assert "`newsletter runs cancel 1`" in result.err

    monkeypatch.setattr("sys.stdin", io.StringIO("n\n"))
    result = cli("runs", "cancel", "1")
    assert result.code == 1 and "Cancel run 1" in result.out and "aborted" in result.err
    assert "sending" in cli("runs").out

    result = cli("runs", "cancel", "1", "--yes")
    assert result.code == 0, result.err
    assert "run 1 cancelled: sent 3, failed 3, skipped 4" in result.out
    shown = cli("runs", "1").out
    assert "cancelled" in shown and "may or may not have been delivered" in shown
    assert cli("resume", "1", "--yes").code == 1

    result = cli("send", digest_path, "--yes")
    assert result.code == 0, result.err
    assert "6 readers had this issue from a cancelled run: left out" in result.out
    sent_to = sorted(email.message_from_bytes(p.read_bytes())["To"] for p in (tmp_path / "outbox").glob("*.eml"))
    assert sent_to == sorted(set(emails) - set(delivered) - set(in_flight))
    assert cli("send", digest_path, "--yes").code == 1, "finished now: not again without --again"


def test_a_cancelled_run_is_never_sent_on(subs, settings, tmp_path):
    """A process that loaded the run before it was cancelled finds out once it holds the lease."""
    from newsletter.providers.outbox import OutboxProvider
    from newsletter.render import Renderer
    from newsletter.send import Composer, Sender, render_variants

    add_readers(subs, 8)
    digest, ledger, run, _, _ = half_sent(subs, settings)
    stale_view = ledger.run(run.id)
    ledger.cancel(run.id)
    variants = render_variants(Renderer(settings), digest, ledger.variants(run.id))
    provider = OutboxProvider(tmp_path / "outbox")
    sender = Sender(ledger, provider, Composer(settings, digest.slug, variants), rate=1000.0)
    with pytest.raises(SendError, match="run 1 is cancelled"):
        sender.send(stale_view)
    assert ledger.run(run.id).status == RunStatus.CANCELLED
    assert not (tmp_path / "outbox").exists()
