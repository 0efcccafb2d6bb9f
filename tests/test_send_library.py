"""Sending as a library: what a scheduler calls, with no CLI around it, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections import Counter
from email import message_from_bytes, policy

import pytest
import sqlalchemy as sa

from newsletter import send
from newsletter.digest import load_digest
from newsletter.errors import AlreadySent, RunBusy, RunNotFound, RunUnfinished, SendError
from newsletter.ledger import Ledger, RunStatus
from newsletter.providers.outbox import OutboxProvider
from newsletter.store import run_variants
from newsletter.subscribers import Consent, ConsentMethod

from .conftest import EXAMPLE

CATEGORY_SETS = [(), ("ai-tech",), ("essays",), ("ai-research", "ai-tech")]


@pytest.fixture
def lib_settings(settings, tmp_path, monkeypatch):
    """The outbox, batches of 3, no waiting, and a key file of the test's own."""
    monkeypatch.delenv("NEWSLETTER_SECRET_KEY", raising=False)
    return settings.with_overrides(provider=None, outbox_dir=tmp_path / "outbox", batch_size=3,
                                   send_rate=1000.0, secret_key_file=tmp_path / "newsletter.key")


@pytest.fixture
def emails(subs):
    added = [f"lib{i}@example.com" for i in range(8)]
    for i, email in enumerate(added):
        subs.add(email, categories=CATEGORY_SETS[i % len(CATEGORY_SETS)], consent=Consent(ConsentMethod.CLI))
    return added


def outbox(settings) -> Counter:
    """How many messages each address got in the outbox."""
    files = settings.outbox_dir.glob("*.eml") if settings.outbox_dir.exists() else []
    return Counter(message_from_bytes(p.read_bytes(), policy=policy.default)["To"] for p in files)


def start(settings, subs, digest_path=EXAMPLE, **options):
    digest = load_digest(digest_path, settings)
    ledger = Ledger(subs.engine)
    run, variants, due = send.start_run(settings, digest, subs, ledger, **options)
    return digest, ledger, run, variants, due


def test_start_and_deliver_to_the_outbox(lib_settings, subs, emails):
    digest, ledger, run, variants, due = start(lib_settings, subs)
    assert run.status == RunStatus.SENDING and run.provider == "outbox"
    assert due.total == len(emails) and sorted(variants) == sorted(due.per_variant)
    assert outbox(lib_settings) == Counter(), "starting a run sends nothing"

    run = send.deliver(lib_settings, ledger, run, variants)
    assert run.status == RunStatus.FINISHED
    assert ledger.counts(run.id)["sent"] == len(emails)
    assert outbox(lib_settings) == Counter({email: 1 for email in emails})
    assert (lib_settings.secret_key_file).exists(), "view links are signed with the settings' key"


def test_an_issue_already_sent(lib_settings, subs, emails):
    digest, ledger, run, variants, _ = start(lib_settings, subs)
    send.deliver(lib_settings, ledger, run, variants)
    with pytest.raises(AlreadySent, match=rf"{digest.slug} was already sent \(run {run.id}, finished") as e:
        start(lib_settings, subs)
    assert e.value.run_id == run.id
    with pytest.raises(AlreadySent, match=f"run {run.id} is finished") as e:
        send.resume(lib_settings, ledger, run.id)
    assert e.value.run_id == run.id
    _, _, again, _, _ = start(lib_settings, subs, again=True)
    assert again.id != run.id and again.status == RunStatus.SENDING


def test_an_unfinished_run_of_the_issue(lib_settings, subs, emails):
    _, ledger, first, _, _ = start(lib_settings, subs)
    for again in (False, True):
        with pytest.raises(RunUnfinished, match=f"run {first.id} of .* is sending") as e:
            start(lib_settings, subs, again=again)
        assert e.value.run_id == first.id
    assert [r.id for r in ledger.runs()] == [first.id]


def test_two_runs_created_at_once_name_the_one_that_won(lib_settings, subs, emails):
    """Past the checks, only the database refuses the second run: the error still names the first."""
    digest, ledger, first, _, _ = start(lib_settings, subs)
    with pytest.raises(RunUnfinished, match="was started at the same moment") as e:
        ledger.create_run(issue=digest.slug, digest_path="x", digest_sha256="x", settings_sha256="x",
                          subject="s", provider="outbox", recipients=[(1, "all")])
    assert e.value.run_id == first.id


def test_a_run_another_process_is_sending(lib_settings, subs, emails):
    if subs.engine.dialect.name != "sqlite":
        pytest.skip("one sender per run is SQLite's rule; on PostgreSQL senders share a run, batch by batch (test_workers.py)")
    digest, ledger, run, variants, _ = start(lib_settings, subs)
    elsewhere = Ledger(subs.engine)
    elsewhere.owner = "another-host:4242"  # alive, on another machine: its lease must be respected
    elsewhere.acquire(run.id, 300)
    with pytest.raises(RunBusy, match=f"run {run.id} is being sent by another-host:4242") as e:
        send.resume(lib_settings, ledger, run.id)
    assert e.value.run_id == run.id
    with pytest.raises(RunBusy) as e:
        send.deliver(lib_settings, ledger, run, variants)
    assert e.value.run_id == run.id
    assert outbox(lib_settings) == Counter()
    assert ledger.counts(run.id)["queued"] == len(emails)


def test_a_run_that_does_not_exist(lib_settings, subs, emails):
    ledger = Ledger(subs.engine)
    with pytest.raises(RunNotFound) as e:
        send.resume(lib_settings, ledger, 99)
    assert str(e.value) == "there is no send run 99 (see `newsletter runs`)" and e.value.run_id == 99


def test_stop_pauses_after_the_batch_in_flight_and_resume_finishes(lib_settings, subs, emails):
    digest, ledger, run, variants, _ = start(lib_settings, subs)
    stop = threading.Event()
    seen = []

    def on_progress(progress):
        seen.append(progress.done)
        stop.set()  # as a signal handler or a scheduler's shutdown would

    run = send.deliver(lib_settings, ledger, run, variants, on_progress=on_progress, stop=stop)
    assert run.status == RunStatus.PAUSED and run.reason == "paused by the user"
    assert seen == [3] and sum(outbox(lib_settings).values()) == 3, "one batch, then the pause"

    progress = []
    run = send.resume(lib_settings, Ledger(subs.engine), run.id, on_progress=lambda p: progress.append(p.done))
    assert run.status == RunStatus.FINISHED
    assert progress == [6, 8]
    assert outbox(lib_settings) == Counter({email: 1 for email in emails})


def test_resume_refuses_a_changed_digest(lib_settings, subs, emails, tmp_path):
    copy = tmp_path / EXAMPLE.name
    copy.write_text(EXAMPLE.read_text())
    _, ledger, run, _, _ = start(lib_settings, subs, copy)
    copy.write_text(EXAMPLE.read_text().replace("Corrections are always welcome.", "Corrections welcome."))
    with pytest.raises(SendError, match=f"changed since run {run.id} started") as e:
        send.resume(lib_settings, ledger, run.id)
    assert e.value.run_id == run.id
    assert outbox(lib_settings) == Counter() and ledger.counts(run.id)["queued"] == len(emails)
    copy.write_text(EXAMPLE.read_text())
    assert send.resume(lib_settings, ledger, run.id).status == RunStatus.FINISHED


class Watched(OutboxProvider):
    """The outbox, noting whether it was closed."""

    closed = False

    def close(self) -> None:
        self.closed = True
        super().close()


def test_the_provider_is_closed_by_whoever_made_it(lib_settings, subs, emails, monkeypatch):
    if subs.engine.dialect.name != "sqlite":
        pytest.skip("one sender per run is SQLite's rule; on PostgreSQL senders share a run, batch by batch (test_workers.py)")
    digest, ledger, run, variants, _ = start(lib_settings, subs)
    made = []
    monkeypatch.setattr(send, "make_provider", lambda settings: made.append(Watched(settings.outbox_dir))
                        or made[-1])
    elsewhere = Ledger(subs.engine)
    elsewhere.owner = "another-host:4242"
    elsewhere.acquire(run.id, 300)
    with pytest.raises(RunBusy):
        send.deliver(lib_settings, ledger, run, variants)
    assert made[-1].closed, "made by deliver: closed, even when the send fails"
    elsewhere.release(run.id)

    mine = Watched(lib_settings.outbox_dir)
    assert send.deliver(lib_settings, ledger, run, variants, provider=mine).status == RunStatus.FINISHED
    assert not mine.closed, "passed in: the caller's to close"


def test_a_run_goes_on_only_with_its_own_provider(lib_settings, subs, emails):
    digest, ledger, run, variants, _ = start(lib_settings, subs)

    class Elsewhere(Watched):
        name = "smtp"

    with pytest.raises(SendError, match=f"run {run.id} was started with outbox; the settings now say smtp"):
        send.deliver(lib_settings, ledger, run, variants, provider=Elsewhere(lib_settings.outbox_dir))
    assert outbox(lib_settings) == Counter()


def test_a_reader_who_subscribes_between_the_plan_and_the_run_gets_the_issue(lib_settings, subs, emails):
    """`send` shows the plan, renders and asks before the run exists: someone who subscribes
    meanwhile, with categories no one else has, is in the run, and their variant is rendered then
    and kept with it."""
    digest, ledger = load_digest(EXAMPLE, lib_settings), Ledger(subs.engine)
    due = send.plan_run(digest, subs, ledger)
    variants = send.prepare_variants(lib_settings, digest, due)
    late = send.variant_for(["ai-news"], *send.digest_categories(digest))
    assert late not in variants, "the test needs a variant no reader of the plan gets"
    subs.add("late@example.com", categories=["ai-news"], consent=Consent(ConsentMethod.CLI))

    run, variants, due = send.start_run(lib_settings, digest, subs, ledger, due=due, variants=variants)
    assert late in variants and due.total == len(emails) + 1
    assert sorted(ledger.run_variants(run.id)) == sorted(ledger.variants(run.id)) == sorted(variants)
    run = send.deliver(lib_settings, ledger, run, variants)
    assert run.status == RunStatus.FINISHED, run.reason
    assert outbox(lib_settings) == Counter({email: 1 for email in [*emails, "late@example.com"]})


def html_parts(settings) -> list[str]:
    return [message_from_bytes(p.read_bytes(), policy=policy.default).get_body(("html",)).get_content()
            for p in settings.outbox_dir.glob("*.eml")]


def test_a_run_is_sent_as_its_variants_were_rendered_when_it_started(lib_settings, subs, emails):
    """A run keeps its variants: a resume (or a worker) sends those, not what today's templates or
    digest would render, so a batch sent again is the same request and every reader of a variant
    gets the same email. A run from before runs kept them is rendered from its digest."""
    digest, ledger, run, variants, _ = start(lib_settings, subs)
    kept = ledger.run_variants(run.id)
    assert {key: (v.html, v.text, v.subject) for key, v in kept.items()} == {
        key: (v.html.source, v.text.source, v.subject) for key, v in variants.items()}
    assert all("%%unsubscribe_url%%" in v.html for v in kept.values()), "reader links stay placeholders"
    with subs.engine.begin() as conn:  # what the templates made of it then, told apart from what they make now
        conn.execute(sa.update(run_variants).values(
            html=sa.func.replace(run_variants.c.html, "</body>", "<p>as kept</p></body>")))
    run = send.resume(lib_settings, ledger, run.id)
    assert run.status == RunStatus.FINISHED, run.reason
    sent = html_parts(lib_settings)
    assert len(sent) == len(emails) and all("<p>as kept</p>" in html for html in sent)

    older, variants, _ = start(lib_settings, subs, again=True)[2:]
    with subs.engine.begin() as conn:
        conn.execute(sa.delete(run_variants).where(run_variants.c.run_id == older.id))
    assert send.resume(lib_settings, ledger, older.id).status == RunStatus.FINISHED
    assert len(html_parts(lib_settings)) == 2 * len(emails)
