"""The send engine: every due reader gets the issue exactly once, whatever the provider does.

It depends on two small interfaces: a ledger (`ledger.Ledger`) and a provider (`providers`).
Each distinct set of categories is rendered once; each reader's copy is that rendering with
their own links filled in. A reader's delivery is marked sent only after the provider accepted
it, and a batch is committed as `sending` before the provider sees it, so after a crash at any
point the batch goes out again under the same idempotency key and is delivered once.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import random
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

from .config import Settings, load_secret_key
from .errors import (AlreadySent, ProviderError, QuotaExceeded, RateLimited, Rejected, RunUnfinished,
                     SendError, StoreError, Unavailable)
from .ledger import Audience, Batch, Ledger, Recipient, Run, RunStatus, RunVariant
from .links import Links, Personal, as_uri
from .pace import Pace
from .providers import Message, Outcome, Provider, make_provider
from .providers.mime import Template, encode
from .subscribers import Subscribers, normalize_email

if TYPE_CHECKING:  # rendering is imported where it is done: a worker sends what a run keeps
    from .digest import Digest
    from .render import Renderer

ALL = "all"  # the variant of readers with no categories: every story
PAUSED_BY_USER = "paused by the user"  # Ctrl-C; left alone until `newsletter resume`
PAUSED_BY_SCHEDULER = "paused: the scheduler stopped"  # resumed when the scheduler starts again
LEASE_SECONDS = 300.0
MAX_CHECKED_VARIANTS = 64  # `check` renders every possible variant up to this many
# A provider counts its rate-limit window from when a request reached it, a moment after the
# request started (`Pace.take`'s slot): its `ratelimit-reset` is counted from then plus this.
REACHED = 0.025
HEADER_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


# -- who gets which variant ----------------------------------------------------------------------

def digest_categories(digest: Digest) -> tuple[set[str], bool]:
    """The categories the digest's stories carry, and whether some story is for everyone."""
    stories = [s for s in digest.stories if s.kind == "story"]
    return {c for s in stories for c in (s.categories or ())}, any(s.categories is None for s in stories)


def variant_for(categories: Iterable[str], digest_cats: set[str], open_story: bool) -> str | None:
    """The variant key of a reader with these categories, or None if no story is for them."""
    chosen = set(categories)
    if not chosen:
        return ALL
    kept = chosen & digest_cats
    if not kept and not open_story:
        return None
    return "+".join(sorted(kept)) if kept else "none"


def possible_variants(digest: Digest) -> list[str]:
    """Every variant key some reader could get: the keys `plan` can give, whoever subscribes.

    With many categories that is 2^n sets; past MAX_CHECKED_VARIANTS, every story alone, every
    category alone and all of them together stand for the rest (a section renders the same in
    any set that keeps it)."""
    cats, open_story = digest_categories(digest)
    slugs = sorted(cats)
    if 2 ** len(slugs) <= MAX_CHECKED_VARIANTS:
        sets = [c for n in range(1, len(slugs) + 1) for c in itertools.combinations(slugs, n)]
    else:
        sets = [(s,) for s in slugs] + [tuple(slugs)]
    keys = [ALL] + ["+".join(c) for c in sets] + (["none"] if open_story else [])
    return list(dict.fromkeys(keys))


def categories_of(variant: str) -> list[str] | None:
    if variant == ALL:
        return None
    return [] if variant == "none" else variant.split("+")


@dataclass
class Plan:
    """Who is due, per variant, before anything is created: counted by the database, which
    copies the same readers into the run (`Ledger.create_run`) without this process holding them."""

    per_variant: dict[str, int]
    not_due: int  # active readers none of whose categories is in this issue
    had_it: int = 0  # left out: an earlier, cancelled run delivered to them
    audience: Audience | None = None

    @property
    def total(self) -> int:
        return sum(self.per_variant.values())

    def check_someone_due(self) -> None:
        """Refuse a run with no one in it."""
        if not self.total:
            raise SendError("no active reader is due for this issue (see `newsletter subscribers count`)")


def audience_of(digest: Digest, leave_out: bool = False) -> Audience:
    """Who a run of `digest` is for (see `variant_for`); `leave_out`: not the readers an earlier
    run of the issue reached."""
    cats, open_story = digest_categories(digest)
    return Audience(tuple(sorted(cats)), open_story, all_key=ALL, none_key="none",
                    leave_out=digest.slug if leave_out else None)


def plan(digest: Digest, ledger: Ledger, leave_out: bool = False) -> Plan:
    """Who is due for `digest`: every active reader it has a story for, except, with `leave_out`,
    the readers an earlier, cancelled run of the issue delivered to."""
    audience = audience_of(digest, leave_out)
    per_variant, not_due, had_it = ledger.count_audience(audience)
    return Plan(per_variant, not_due, had_it, audience)


# -- rendering once per variant -----------------------------------------------------------------

@dataclass
class Variant:
    key: str
    html: Personal
    text: Personal
    size: int
    subject: str  # the digest's title, or the subject its front matter gives these categories

    def kept(self) -> RunVariant:
        """As a run keeps it (`Ledger.create_run`)."""
        return RunVariant(self.key, self.subject, self.html.source, self.text.source, self.size)

    @classmethod
    def of(cls, kept: RunVariant) -> "Variant":
        return cls(kept.key, Personal(kept.html, html=True), Personal(kept.text), kept.size, kept.subject)


def run_variants(ledger: Ledger, run_id: int) -> dict[str, Variant]:
    """The variants run `run_id` keeps, as they were rendered when it was created (none for a run
    created before runs kept them)."""
    return {key: Variant.of(kept) for key, kept in ledger.run_variants(run_id).items()}


def render_variants(renderer: Renderer, digest: Digest, keys: Iterable[str]) -> dict[str, Variant]:
    variants = {}
    for key in keys:
        email = renderer.render(digest, categories_of(key))
        variants[key] = Variant(key, Personal(email.html, html=True), Personal(email.text), email.size,
                                email.subject)
    return variants


def prepare(renderer: Renderer, digest: Digest, settings: Settings, keys: Iterable[str]) -> dict[str, Variant]:
    """Render every variant and build one complete message of each, headers and all.

    This runs before a send run exists (and in `check`): whatever the digest or the settings
    cannot become fails here, with a readable error, not halfway through a list with readers
    queued behind a run that can never finish."""
    variants = render_variants(renderer, digest, keys)
    composer = Composer(settings, digest.slug, variants)
    for key in variants:
        sample = Recipient(0, "reader@example.com", "A Reader", "t" * 32, key)
        message = composer.message("check", sample)
        headers = {"Subject": message.subject, "From": message.sender, "Reply-To": message.reply_to or "",
                   **message.headers}
        for name, value in headers.items():
            bad = HEADER_UNSAFE.search(value)
            if bad:
                raise SendError(f"{digest.path}: the {name} header would contain the control "
                                f"character {bad.group()!r}; remove it from the digest or the settings")
        try:
            encode(message)  # as the outbox and SMTP will, from the variant's template
        except (ValueError, TypeError, LookupError) as e:
            raise SendError(f"{digest.path}: cannot build the message for variant {key}: {e}") from None
    return variants


def digest_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def settings_sha256(settings: Settings) -> str:
    """What of the settings goes into every message: a batch sent again must be the same request."""
    parts = [settings.name, settings.sender, settings.reply_to or "", settings.base_url]
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


# -- messages -----------------------------------------------------------------------------------

class Composer:
    """A reader's message: their variant with their links, and the list headers (RFC 8058).

    With the secret key (`view_key`), the view-in-browser link shows the reader's variant;
    without it, the whole issue."""

    def __init__(self, settings: Settings, issue: str, variants: dict[str, Variant],
                 view_key: bytes | None = None):
        self.settings, self.issue, self.variants = settings, issue, variants
        self.reader_links = Links(settings.base_url, view_key)
        host = re.sub(r"^https?://", "", settings.base_url).split("/")[0].split(":")[0]
        slug = re.sub(r"[^a-z0-9]+", "-", settings.name.lower()).strip("-") or "newsletter"
        self.list_id = f"{settings.name} <{slug}.{host}>"
        self.templates = {key: Template(v.html, v.text) for key, v in variants.items()}  # encoded on first use

    def message(self, key: str, recipient: Recipient) -> Message:
        variant = self.variants[recipient.variant]
        links = self.reader_links.for_reader(self.issue, recipient.token, recipient.variant)
        return Message(
            key=key, to=recipient.email, sender=self.settings.sender, reply_to=self.settings.reply_to,
            subject=variant.subject,
            headers={"List-Unsubscribe": f"<{as_uri(links['unsubscribe_url'])}>",
                     "List-Unsubscribe-Post": "List-Unsubscribe=One-Click", "List-Id": self.list_id},
            tags={"issue": self.issue, "variant": recipient.variant},
            template=self.templates[recipient.variant], links=links)


# -- runs ---------------------------------------------------------------------------------------

def check_new_run(ledger: Ledger, digest: Digest, *, again: bool = False) -> bool:
    """Refuse to send an issue twice by accident, or to start over while a run of it is open.

    Returns whether a new run must leave out readers an earlier, cancelled run of the issue may
    have delivered to (never with `again`, which sends to everyone)."""
    earlier = ledger.runs(digest.slug)
    open_runs = [r for r in earlier if r.status in (RunStatus.SENDING, RunStatus.PAUSED)]
    if open_runs:
        r = open_runs[-1]
        why = f" ({r.reason})" if r.reason else ""
        raise RunUnfinished(f"run {r.id} of {digest.slug} is {r.status.value}{why}; resume it with "
                            f"`newsletter resume {r.id}` or end it with `newsletter runs cancel {r.id}`",
                            run_id=r.id)
    finished = [r for r in earlier if r.status == RunStatus.FINISHED]
    if finished and not again:
        r = finished[-1]
        raise AlreadySent(f"{digest.slug} was already sent (run {r.id}, finished "
                          f"{r.finished_at:%Y-%m-%d %H:%M} UTC); send it again with --again", run_id=r.id)
    return bool(earlier) and not again


def open_run(ledger: Ledger, digest: Digest, subscribers: Subscribers, provider: str, settings: Settings,
             *, again: bool = False, due: Plan | None = None,
             variants: dict[str, Variant] | None = None) -> tuple[Run, Plan, dict[str, Variant]]:
    """A new run of `digest` with a snapshot of who is due (`due`, if already planned), keeping
    its variants: those of `variants` (prepared from the plan), and any other the readers copied
    into it need (someone subscribed or changed their categories since the plan), prepared now.
    The run's variants are the third value."""
    leave_out = check_new_run(ledger, digest, again=again)
    due = due if due is not None else plan(digest, ledger, leave_out)
    due.check_someone_due()
    from .archive import record_issue  # archive.py reads variants through this module

    source = Path(digest.path).read_bytes()  # read once: the run and the archive hold the same text
    ready = dict(variants or {})
    sizes: dict[str, int] = {}

    def rendered(copied: dict[str, int]) -> list[RunVariant]:
        """For `create_run`: each variant of the readers it copied (those of the plan prepared)."""
        sizes.update(copied)
        missing = [key for key in copied if key not in ready]
        if missing:
            from .render import Renderer

            ready.update(prepare(Renderer(settings), digest, settings, missing))
        return [ready[key].kept() for key in copied]
    run = ledger.create_run(issue=digest.slug, digest_path=str(digest.path),
                            digest_sha256=hashlib.sha256(source).hexdigest(),
                            settings_sha256=settings_sha256(settings), subject=digest.title,
                            provider=provider, audience=audience_of(digest, leave_out),
                            variants=rendered)
    # After the run exists: of two sends started at once, only the one whose run was created
    # records its text. The web archive shows the issue once a run of it has finished.
    record_issue(ledger.engine, digest, source)
    # Who is in the run is what the database copied: counted there, per variant, as it copied them.
    return run, Plan(sizes, due.not_due, due.had_it, due.audience), {key: ready[key] for key in sizes}


def check_unchanged(run: Run, digest: Digest, settings: Settings) -> None:
    """A run resumes only with the digest and the sender settings it started with: every reader
    gets the same issue, and a batch sent again must be the same request."""
    if digest_sha256(digest.path) != run.digest_sha256:
        raise SendError(f"{digest.path} changed since run {run.id} started; restore that version "
                        "to resume (its readers must get what the others got), or end the run with "
                        f"`newsletter runs cancel {run.id}` and send the new version to the rest",
                        run_id=run.id)
    if run.settings_sha256 and settings_sha256(settings) != run.settings_sha256:
        raise SendError(f"name, sender, reply_to or base_url changed since run {run.id} started; "
                        f"restore them to resume, or end the run with `newsletter runs cancel {run.id}`",
                        run_id=run.id)


# -- the engine ---------------------------------------------------------------------------------

@dataclass
class Progress:
    total: int
    sent: int = 0
    failed: int = 0
    skipped: int = 0
    requests: int = 0
    retries: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def done(self) -> int:
        return self.sent + self.failed + self.skipped


@dataclass(frozen=True)
class Pause:
    """Why a run stops before its end. `transient`: time may fix it (a daily quota, an outage, a
    run of failed requests), so the scheduler tries again later; otherwise (Ctrl-C, a bad API key,
    a refused sender) the run waits for someone to look."""

    reason: str
    transient: bool = False


class Sender:
    """Sends a run's batches through a provider, recording every answer in the ledger.

    Any number of senders, in processes on any machines, may send one run at once on PostgreSQL
    (`newsletter send`, the scheduler, `newsletter worker`): each claims batches of its own, and
    they share what must be shared through the database: the provider's rate limit (`pace.Pace`),
    the run's status (a pause by any of them, or by `newsletter pause`, stops all of them after
    their batch in flight) and its streak of failed requests. On SQLite one sender holds the run
    (its lease on the run), as one writer holds the database."""

    def __init__(self, ledger: Ledger, provider: Provider, composer: Composer, *, rate: float,
                 batch_size: int = 100, max_failures: int = 8, base_delay: float = 0.5,
                 max_delay: float = 30.0, lease: float = LEASE_SECONDS, clock: Callable[[], float] = time.monotonic,
                 jitter: Callable[[], float] = random.random, stop: threading.Event | None = None,
                 stop_reason: str = PAUSED_BY_USER, poll: float = 0.25):
        self.ledger, self.provider, self.composer = ledger, provider, composer
        self.stop_reason = stop_reason  # what a paused run says when `stop` paused it
        self.batch_size, self.max_failures, self.lease = batch_size, max_failures, lease
        self.base_delay, self.max_delay, self.jitter = base_delay, max_delay, jitter
        self.clock = clock
        self.poll = poll  # seconds between looks while only other processes' batches are left
        self.pace = Pace(ledger.engine, provider.name, rate)
        self.stopping = stop if stop is not None else threading.Event()  # set: pause after the batch in flight
        self.holds_run = ledger.engine.dialect.name == "sqlite"
        self.leased_at = 0.0  # when this sender last took or renewed its lease on the run (self.clock)

    def stop(self) -> None:
        """Pause after the batch in flight (what Ctrl-C does)."""
        self.stopping.set()

    def send(self, run: Run, on_progress: Callable[[Progress], None] | None = None) -> Run:
        """Start or resume `run` and send until nothing is left or it pauses; the run as it stands
        at the end. Stopping (`stop`) pauses the run for every process sending it."""
        if self.holds_run:
            self.ledger.acquire(run.id, self.lease)
            self.leased_at = self.clock()
        try:
            run = self.ledger.run(run.id)  # as it is now that no one else can change it (a cancel takes the lease)
            if run.status in (RunStatus.FINISHED, RunStatus.CANCELLED):
                error = AlreadySent if run.status == RunStatus.FINISHED else SendError
                raise error(f"run {run.id} is {run.status.value}; send the issue again with `newsletter send`",
                            run_id=run.id)
            self.ledger.set_status(run.id, RunStatus.SENDING)
            pause = self.work(run, on_progress)
            if pause is not None:
                self.ledger.pause(run.id, pause.reason, transient=pause.transient)  # unless paused already
            else:
                self.ledger.finish(run.id)
        finally:
            if self.holds_run:
                self.ledger.release(run.id)
        return self.ledger.run(run.id)

    def work(self, run: Run, on_progress: Callable[[Progress], None] | None = None) -> Pause | None:
        """Take part in sending `run` while it is being sent: None once nothing is left to send,
        else why this sender stopped (it writes no status: `send` does, a worker leaves the run
        to the others)."""
        self.ledger.expire_batches(run.id, everyone=self.holds_run)  # what a stopped process left
        self.ledger.join(run.id)
        counts = self.ledger.counts(run.id)
        progress = Progress(total=sum(counts.values()), sent=counts["sent"], failed=counts["failed"],
                            skipped=counts["skipped"])
        try:
            return self._loop(run.id, progress, on_progress)
        finally:
            # Stopped with a batch maybe in flight (a pause, an error, a second Ctrl-C): its lease
            # ends now, so the next sender sends it again at once, as the same request.
            with contextlib.suppress(StoreError):
                self.ledger.give_up(run.id)
                self.ledger.leave(run.id)

    def _loop(self, run_id: int, progress: Progress, on_progress) -> Pause | None:
        while True:
            if self.stopping.is_set():
                return Pause(self.stop_reason)
            elsewhere = self._stopped_elsewhere(run_id)
            if elsewhere is not None:
                return None if elsewhere is FINISHED else elsewhere
            batch = self.ledger.claim(run_id, self.batch_size, self.lease)
            if batch is None:
                if not self.ledger.unfinished(run_id):
                    return None
                # Only batches other processes hold are left: wait until they are answered, or
                # until a lease runs out (its process died) and the batch is this one's to send.
                self.stopping.wait(self.poll)
                continue
            progress.skipped += batch.skipped
            if not batch.recipients:
                continue
            messages = [self.composer.message(f"r{run_id}-{r.delivery_id}", r) for r in batch.recipients]
            pause = self._deliver(run_id, batch, messages, progress)
            del messages  # before the next batch's are made
            if pause is not None:
                return pause
            if on_progress:
                on_progress(progress)

    def _stopped_elsewhere(self, run_id: int) -> Pause | object | None:
        """The run's status, shared by every sender: FINISHED, a Pause (paused or cancelled by
        another process or by the user), or None to go on."""
        run = self.ledger.run(run_id)
        if run.status == RunStatus.SENDING:
            return None
        if run.status == RunStatus.FINISHED:
            return FINISHED
        return Pause(run.reason or f"the run was {run.status.value}", run.transient)

    def _renew_run(self, run_id: int) -> None:
        """Keep the lease on the run (SQLite) while working: retries of one batch can take minutes."""
        if self.holds_run and self.clock() - self.leased_at > self.lease / 4:
            self.ledger.acquire(run_id, self.lease)
            self.leased_at = self.clock()

    def _deliver(self, run_id: int, batch: Batch, messages: list[Message], progress: Progress) -> Pause | None:
        """Send one batch until the provider answers; why to pause if it will not."""
        rate_limited, unknown, attempts = 0, False, 0  # unknown: a request may have been done without an answer

        def refused(reason: str, transient: bool = False) -> Pause:
            if not unknown:  # every attempt was refused as a whole: nothing was delivered
                self.ledger.requeue(batch)
            return Pause(reason, transient)

        while True:
            retrying = attempts > 0
            if retrying:  # between attempts: the run may have paused meanwhile, and the leases must hold
                if self.stopping.is_set():
                    return refused(self.stop_reason)  # in flight only if a request may have got through
                elsewhere = self._stopped_elsewhere(run_id)
                if isinstance(elsewhere, Pause):
                    return refused(elsewhere.reason, elsewhere.transient)
                if not self.ledger.renew(batch, self.lease):
                    return None  # another process took the batch over: it is that one's to send now
            started = self.pace.take(self.stopping if retrying else None)  # a first attempt always goes out
            if self.stopping.is_set() and retrying:
                return refused(self.stop_reason)
            self._renew_run(run_id)
            attempts += 1
            progress.requests += 1
            try:
                result = self.provider.send(messages, batch.key)
            except RateLimited as e:
                rate_limited += 1
                progress.retries += 1
                if rate_limited > self.max_failures * 10:
                    return refused(f"the provider kept refusing for rate limits: {e}", transient=True)
                self.pace.defer(started, e.retry_after if e.retry_after is not None else 1.0)
                continue
            except QuotaExceeded as e:
                return refused(f"quota exceeded: {e}", transient=True)
            except Rejected as e:
                return refused(f"the provider refused the request: {e}")
            except (Unavailable, ProviderError) as e:
                unknown = True
                pause = self._failed(run_id, progress, str(e))
                if pause is not None:
                    return pause
                continue
            sent, failed = self.ledger.record(batch, result.outcomes)
            progress.sent += sent
            progress.failed += failed
            if result.pause:
                return Pause(result.pause)  # refused for good (the sender): time will not fix it
            if result.trouble:
                pause = self._failed(run_id, progress, result.trouble)
                if pause is not None:
                    return pause
            else:
                self.ledger.request_answered(run_id)
            if result.wait:  # counted from when this request reached the provider (see pace.py)
                self.pace.defer(started, result.wait + REACHED)
            return None

    def _failed(self, run_id: int, progress: Progress, what: str) -> Pause | None:
        """Count a failed request in the run's streak and back off before the next; the pause
        once the streak reaches `max_failures`."""
        streak = self.ledger.failed_request(run_id)
        progress.retries += 1
        if streak >= self.max_failures:
            return Pause(f"{streak} failed requests in a row, last: {what}", transient=True)
        delay = min(self.max_delay, self.base_delay * 2 ** (streak - 1))
        self.stopping.wait(delay * (0.5 + self.jitter() / 2))  # jitter: never in lockstep
        return None


FINISHED = object()  # `Sender._stopped_elsewhere`: the run is finished


def describe_variant(settings: Settings, key: str) -> str:
    """A variant as a writer reads it: the names of its categories."""
    slugs = categories_of(key)
    if slugs is None:
        return "every story (readers with no categories)"
    names = [settings.category(s).name if settings.category(s) else s for s in slugs]
    return ", ".join(names) or "stories for everyone only"


# -- the workflow: what `newsletter send` and `resume`, a scheduler and workers all call ---------

def plan_run(digest: Digest, subscribers: Subscribers, ledger: Ledger | None = None, *,
             again: bool = False) -> Plan:
    """Who a new run of `digest` is for. With a ledger, first the checks a run must pass
    (AlreadySent, RunUnfinished), and the readers a cancelled run reached are left out; without
    one (a dry run, test copies), everyone due."""
    leave_out = check_new_run(ledger, digest, again=again) if ledger is not None else False
    return plan(digest, ledger or Ledger(subscribers.engine), leave_out)


def prepare_variants(settings: Settings, digest: Digest, due: Plan) -> dict[str, Variant]:
    """Every variant the readers of `due` need, rendered and built into a message (see `prepare`)."""
    from .render import Renderer

    return prepare(Renderer(settings), digest, settings, sorted(due.per_variant) or [ALL])


def start_run(settings: Settings, digest: Digest, subscribers: Subscribers, ledger: Ledger, *,
              again: bool = False, provider: str | None = None, due: Plan | None = None,
              variants: dict[str, Variant] | None = None) -> tuple[Run, dict[str, Variant], Plan]:
    """Open a run of `digest` for the provider named `provider` (the settings' by default).

    `due` and `variants`, from `plan_run` and `prepare_variants`, spare planning and rendering
    again when the caller showed them first; the checks run again either way, right before the
    run is created. Every variant is prepared before the run exists."""
    due = due or plan_run(digest, subscribers, ledger, again=again)
    variants = variants if variants is not None else prepare_variants(settings, digest, due)
    run, due, variants = open_run(ledger, digest, subscribers, provider or settings.provider or "outbox",
                                  settings, again=again, due=due, variants=variants)
    return run, variants, due


def reopen_run(settings: Settings, ledger: Ledger, run_id: int) -> tuple[Run, Digest, dict[str, Variant]]:
    """A run to resume, with its digest and variants: refused if it is over (AlreadySent, or
    cancelled), unknown (RunNotFound), or if its digest or sender settings changed."""
    run = ledger.run(run_id)
    if run.status == RunStatus.FINISHED:
        raise AlreadySent(f"run {run.id} is finished; to send {run.issue} again use `newsletter send --again`",
                          run_id=run.id)
    if run.status == RunStatus.CANCELLED:
        raise SendError(f"run {run.id} was cancelled; `newsletter send` sends {run.issue} to the readers "
                        "it did not reach", run_id=run.id)
    from .digest import load_digest

    digest = load_digest(run.digest_path, settings)
    check_unchanged(run, digest, settings)
    return run, digest, run_variants(ledger, run.id) or render_run(settings, ledger, run.id, digest)


def render_run(settings: Settings, ledger: Ledger, run_id: int, digest: Digest) -> dict[str, Variant]:
    """The variants of a run created before runs kept them, rendered from its digest now."""
    from .render import Renderer

    return prepare(Renderer(settings), digest, settings, ledger.variants(run_id))


def deliver(settings: Settings, ledger: Ledger, run: Run, variants: dict[str, Variant], *,
            provider: Provider | None = None, on_progress: Callable[[Progress], None] | None = None,
            stop: threading.Event | None = None, stop_reason: str = PAUSED_BY_USER, senders: int = 1) -> Run:
    """Send what is left of `run`; return it as it ends: finished, paused (with its reason), or
    still sending (another process took it over).

    Without `provider`, the settings' one, closed at the end; a provider passed in stays open,
    its caller's to close. Setting `stop` pauses the run after the batch in flight. `senders`
    above 1 (PostgreSQL) sends with that many senders in threads of this process, as that many
    workers would."""
    own = provider is None
    provider = make_provider(settings) if own else provider
    helpers: list[threading.Thread] = []
    try:
        if provider.name != run.provider:  # a batch sent again must go where it went before
            raise SendError(f"run {run.id} was started with {run.provider}; the settings now say "
                            f"{provider.name}", run_id=run.id)
        composer = Composer(settings, run.issue, variants, view_key=load_secret_key(settings))

        def sender_with(with_ledger: Ledger) -> Sender:
            return Sender(with_ledger, provider, composer, rate=settings.send_rate,
                          batch_size=settings.batch_size, max_failures=settings.max_failures,
                          lease=settings.batch_lease, stop=stop, stop_reason=stop_reason)
        if senders > 1 and ledger.engine.dialect.name == "sqlite":
            raise SendError("more than one sender needs PostgreSQL: on SQLite one process sends a run")
        main = sender_with(ledger)
        for n in range(1, senders):
            helper = Ledger(ledger.engine)
            helper.owner = f"{ledger.owner}/{n}"
            helpers.append(threading.Thread(target=_help, args=(sender_with(helper), helper, run), daemon=True))
        if helpers and ledger.run(run.id).status in (RunStatus.SENDING, RunStatus.PAUSED):
            ledger.set_status(run.id, RunStatus.SENDING)  # before the helpers look at it
        for thread in helpers:
            thread.start()
        return main.send(run, on_progress)
    finally:
        for thread in helpers:
            thread.join()
        if own:
            provider.close()


def _help(sender: Sender, ledger: Ledger, run: Run) -> None:
    """A helper thread of `deliver`: its share of the run; its own pause pauses the run."""
    pause = sender.work(run)
    if pause is not None and not sender.stopping.is_set():
        ledger.pause(run.id, pause.reason, transient=pause.transient)


def resume(settings: Settings, ledger: Ledger, run_id: int, *, provider: Provider | None = None,
           on_progress: Callable[[Progress], None] | None = None,
           stop: threading.Event | None = None, stop_reason: str = PAUSED_BY_USER) -> Run:
    """Go on with run `run_id` after a pause or a crash (`reopen_run`, then `deliver`)."""
    run, digest, variants = reopen_run(settings, ledger, run_id)
    return deliver(settings, ledger, run, variants, provider=provider, on_progress=on_progress,
                   stop=stop, stop_reason=stop_reason)


def send_test_copies(settings: Settings, digest: Digest, variants: dict[str, Variant],
                     addresses: Iterable[str], provider: Provider) -> Iterator[tuple[Message, Outcome]]:
    """One copy of each variant to each address, outside the ledger, with sample reader links and
    the subject prefixed `[test: variant]`; what the provider said of each, batch by batch."""
    from .render import preview_links

    links = preview_links(settings, digest)
    list_id = Composer(settings, digest.slug, variants).list_id
    batch_id = uuid.uuid4().hex[:12]
    messages = []
    for address in (normalize_email(a) for a in addresses):
        for key, variant in variants.items():
            messages.append(Message(
                key=f"test-{batch_id}-{len(messages)}", to=address, sender=settings.sender,
                reply_to=settings.reply_to, subject=f"[test: {key}] {variant.subject}",
                html=variant.html.fill(links), text=variant.text.fill(links),
                headers={"List-Unsubscribe": f"<{as_uri(links['unsubscribe_url'])}>",
                         "List-Unsubscribe-Post": "List-Unsubscribe=One-Click", "List-Id": list_id},
                tags={"issue": digest.slug, "variant": key, "test": "yes"}))
    for start in range(0, len(messages), settings.batch_size):
        chunk = messages[start:start + settings.batch_size]
        yield from zip(chunk, provider.send(chunk, f"test-{batch_id}-{start}").outcomes)
