"""The send engine: every due reader gets the issue exactly once, whatever the provider does.

It depends on two small interfaces: a ledger (`ledger.Ledger`) and a provider (`providers`).
Each distinct set of categories is rendered once; each reader's copy is that rendering with
their own links filled in. A reader's delivery is marked sent only after the provider accepted
it, and a batch is committed as `sending` before the provider sees it, so after a crash at any
point the batch goes out again under the same idempotency key and is delivered once.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .config import Settings, load_secret_key
from .digest import Digest, load_digest
from .errors import (AlreadySent, ProviderError, QuotaExceeded, RateLimited, Rejected, RunUnfinished,
                     SendError, Unavailable)
from .ledger import Batch, Ledger, Recipient, Run, RunStatus
from .links import Links
from .providers import Message, Outcome, Provider, make_provider
from .providers.mime import Template, encode
from .render import Personal, Renderer, preview_links
from .subscribers import Subscribers, normalize_email

ALL = "all"  # the variant of readers with no categories: every story
PAUSED_BY_USER = "paused by the user"  # Ctrl-C; left alone until `newsletter resume`
PAUSED_BY_SCHEDULER = "paused: the scheduler stopped"  # resumed when the scheduler starts again
LEASE_SECONDS = 300.0
MAX_CHECKED_VARIANTS = 64  # `check` renders every possible variant up to this many
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
    """Who is due, per variant, before anything is created."""

    recipients: list[tuple[int, str]]  # (reader id, variant)
    per_variant: dict[str, int]
    not_due: int  # active readers none of whose categories is in this issue
    had_it: frozenset[int] = frozenset()  # left out: an earlier, cancelled run delivered to them

    def check_someone_due(self) -> None:
        """Refuse a run with no one in it."""
        if not self.recipients:
            raise SendError("no active reader is due for this issue (see `newsletter subscribers count`)")


def plan(digest: Digest, subscribers: Subscribers, had_it: frozenset[int] = frozenset()) -> Plan:
    """Who is due for `digest`: every active reader it has a story for, except `had_it` (readers an
    earlier, cancelled run of the issue delivered to)."""
    digest_cats, open_story = digest_categories(digest)
    recipients, per_variant, not_due = [], {}, 0
    for reader_id, categories in subscribers.active_categories():
        if reader_id in had_it:
            continue
        variant = variant_for(categories, digest_cats, open_story)
        if variant is None:
            not_due += 1
            continue
        recipients.append((reader_id, variant))
        per_variant[variant] = per_variant.get(variant, 0) + 1
    return Plan(recipients, dict(sorted(per_variant.items())), not_due, had_it)


# -- rendering once per variant -----------------------------------------------------------------

@dataclass
class Variant:
    key: str
    html: Personal
    text: Personal
    size: int
    subject: str  # the digest's title, or the subject its front matter gives these categories


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
    composer = Composer(settings, digest, variants)
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

    def __init__(self, settings: Settings, digest: Digest, variants: dict[str, Variant],
                 view_key: bytes | None = None):
        self.settings, self.digest, self.variants = settings, digest, variants
        self.reader_links = Links(settings.base_url, view_key)
        host = re.sub(r"^https?://", "", settings.base_url).split("/")[0].split(":")[0]
        slug = re.sub(r"[^a-z0-9]+", "-", settings.name.lower()).strip("-") or "newsletter"
        self.list_id = f"{settings.name} <{slug}.{host}>"
        self.tag_issue = digest.slug
        self.templates = {key: Template(v.html, v.text) for key, v in variants.items()}  # encoded on first use

    def message(self, key: str, recipient: Recipient) -> Message:
        variant = self.variants[recipient.variant]
        links = self.reader_links.for_reader(self.digest.slug, recipient.token, recipient.variant)
        return Message(
            key=key, to=recipient.email, sender=self.settings.sender, reply_to=self.settings.reply_to,
            subject=variant.subject, html=variant.html.fill(links), text=variant.text.fill(links),
            headers={"List-Unsubscribe": f"<{links['unsubscribe_url']}>",
                     "List-Unsubscribe-Post": "List-Unsubscribe=One-Click", "List-Id": self.list_id},
            tags={"issue": self.tag_issue, "variant": recipient.variant},
            template=self.templates[recipient.variant], links=links)


# -- runs ---------------------------------------------------------------------------------------

def check_new_run(ledger: Ledger, digest: Digest, *, again: bool = False) -> frozenset[int]:
    """Refuse to send an issue twice by accident, or to start over while a run of it is open.

    Returns the readers a new run must leave out: those an earlier, cancelled run of the issue
    may have delivered to (none with `again`, which sends to everyone)."""
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
    if again or not earlier:
        return frozenset()
    return ledger.had_it(digest.slug)


def open_run(ledger: Ledger, digest: Digest, subscribers: Subscribers, provider: str, settings: Settings,
             *, again: bool = False, due: Plan | None = None) -> tuple[Run, Plan]:
    """A new run of `digest` with a snapshot of who is due (`due`, if already planned)."""
    had_it = check_new_run(ledger, digest, again=again)
    due = due or plan(digest, subscribers, had_it)
    due.check_someone_due()
    from .archive import record_issue  # archive.py reads variants through this module

    source = Path(digest.path).read_bytes()  # read once: the run and the archive hold the same text
    run = ledger.create_run(issue=digest.slug, digest_path=str(digest.path),
                            digest_sha256=hashlib.sha256(source).hexdigest(),
                            settings_sha256=settings_sha256(settings), subject=digest.title,
                            provider=provider, recipients=due.recipients)
    # After the run exists: of two sends started at once, only the one whose run was created
    # records its text. The web archive shows the issue once a run of it has finished.
    record_issue(ledger.engine, digest, source)
    return run, due


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


@dataclass
class Throttle:
    """At most `rate` requests per second, and no sooner than the provider asked."""

    rate: float
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    next_at: float = 0.0

    def wait(self, stop: threading.Event | None = None) -> None:
        delay = self.next_at - self.clock()
        if delay > 0:
            if stop is not None:
                stop.wait(delay)
            else:
                self.sleep(delay)
        self.next_at = max(self.clock(), self.next_at) + 1.0 / self.rate

    def defer(self, seconds: float) -> None:
        self.next_at = max(self.next_at, self.clock() + seconds)


@dataclass(frozen=True)
class Pause:
    """Why a run stops before its end. `transient`: time may fix it (a daily quota, an outage, a
    run of failed requests), so the scheduler tries again later; otherwise (Ctrl-C, a bad API key,
    a refused sender) the run waits for someone to look."""

    reason: str
    transient: bool = False


class Sender:
    """Sends a run's batches through a provider, recording every answer in the ledger."""

    def __init__(self, ledger: Ledger, provider: Provider, composer: Composer, *, rate: float,
                 batch_size: int = 100, max_failures: int = 8, base_delay: float = 0.5,
                 max_delay: float = 30.0, clock: Callable[[], float] = time.monotonic,
                 jitter: Callable[[], float] = random.random, stop: threading.Event | None = None,
                 stop_reason: str = PAUSED_BY_USER):
        self.ledger, self.provider, self.composer = ledger, provider, composer
        self.stop_reason = stop_reason  # what a paused run says when `stop` paused it
        self.batch_size, self.max_failures = batch_size, max_failures
        self.base_delay, self.max_delay, self.jitter = base_delay, max_delay, jitter
        self.clock = clock
        self.throttle = Throttle(rate, clock=clock)
        self.stopping = stop if stop is not None else threading.Event()  # set: pause after the batch in flight
        self.failures = 0
        self.run_id: int | None = None  # the run whose lease this sender holds, from send() on
        self.leased_at = 0.0  # when the lease was last taken or renewed (self.clock)

    def stop(self) -> None:
        """Pause after the batch in flight (what Ctrl-C does)."""
        self.stopping.set()

    def send(self, run: Run, on_progress: Callable[[Progress], None] | None = None) -> Run:
        """Send every remaining delivery of `run`; return the run as it stands at the end."""
        self.ledger.acquire(run.id, LEASE_SECONDS)
        run = self.ledger.run(run.id)  # as it is now that no one else can change it (a cancel takes the lease)
        if run.status in (RunStatus.FINISHED, RunStatus.CANCELLED):
            self.ledger.release(run.id)
            error = AlreadySent if run.status == RunStatus.FINISHED else SendError
            raise error(f"run {run.id} is {run.status.value}; send the issue again with `newsletter send`",
                        run_id=run.id)
        self.run_id, self.leased_at = run.id, self.clock()
        counts = self.ledger.counts(run.id)
        progress = Progress(total=sum(counts.values()), sent=counts["sent"], failed=counts["failed"],
                            skipped=counts["skipped"])
        try:
            self.ledger.set_status(run.id, RunStatus.SENDING)
            pause = self._loop(run, progress, on_progress)
            if pause is not None:
                self.ledger.set_status(run.id, RunStatus.PAUSED, pause.reason, transient=pause.transient)
            elif not self.ledger.unfinished(run.id):
                self.ledger.set_status(run.id, RunStatus.FINISHED)
        finally:
            self.ledger.release(run.id)
        return self.ledger.run(run.id)

    def _loop(self, run: Run, progress: Progress, on_progress) -> Pause | None:
        pending = self.ledger.in_flight(run.id)  # first what a stop left in flight
        while True:
            if self.stopping.is_set():
                return Pause(self.stop_reason)
            batch = pending.pop(0) if pending else self.ledger.claim(run.id, self.batch_size)
            if batch is None:
                return None
            progress.skipped += batch.skipped
            if not batch.recipients:
                continue
            messages = [self.composer.message(f"r{run.id}-{r.delivery_id}", r) for r in batch.recipients]
            pause = self._deliver(batch, messages, progress)
            if pause is not None:
                return pause
            if on_progress:
                on_progress(progress)

    def _renew(self) -> None:
        """Keep the lease while working: retries of one batch can take minutes."""
        if self.clock() - self.leased_at > LEASE_SECONDS / 4:
            self.ledger.acquire(self.run_id, LEASE_SECONDS)
            self.leased_at = self.clock()

    def _deliver(self, batch: Batch, messages: list[Message], progress: Progress) -> Pause | None:
        """Send one batch until the provider answers; why to pause if it will not."""
        rate_limited, unknown = 0, False  # unknown: a request may have been done without an answer

        def refused(reason: str, transient: bool = False) -> Pause:
            if not unknown:  # every attempt was refused as a whole: nothing was delivered
                self.ledger.requeue(batch)
            return Pause(reason, transient)

        while True:
            retrying = bool(self.failures or rate_limited)
            self.throttle.wait(self.stopping if retrying else None)  # a first attempt always goes out
            if self.stopping.is_set() and retrying:
                return refused(self.stop_reason)  # in flight only if a request may have got through
            self._renew()
            progress.requests += 1
            try:
                result = self.provider.send(messages, batch.key)
            except RateLimited as e:
                rate_limited += 1
                progress.retries += 1
                if rate_limited > self.max_failures * 10:
                    return refused(f"the provider kept refusing for rate limits: {e}", transient=True)
                self.throttle.defer(e.retry_after if e.retry_after is not None else 1.0)
                continue
            except QuotaExceeded as e:
                return refused(f"quota exceeded: {e}", transient=True)
            except Rejected as e:
                return refused(f"the provider refused the request: {e}")
            except (Unavailable, ProviderError) as e:
                unknown = True
                if self._failed(progress):
                    return Pause(f"{self.failures} failed requests in a row, last: {e}", transient=True)
                continue
            sent, failed = self.ledger.record(batch, result.outcomes)
            progress.sent += sent
            progress.failed += failed
            if result.pause:
                return Pause(result.pause)  # refused for good (the sender): time will not fix it
            if result.trouble:
                if self._failed(progress):
                    return Pause(f"{self.failures} failed requests in a row, last: {result.trouble}",
                                 transient=True)
            else:
                self.failures = 0
            if result.wait:
                self.throttle.defer(result.wait)
            return None

    def _failed(self, progress: Progress) -> bool:
        """Count a failed request and schedule the next with backoff; True: time to pause."""
        self.failures += 1
        progress.retries += 1
        if self.failures >= self.max_failures:
            return True
        delay = min(self.max_delay, self.base_delay * 2 ** (self.failures - 1))
        self.throttle.defer(delay * (0.5 + self.jitter() / 2))  # jitter: never in lockstep
        return False


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
    had_it = check_new_run(ledger, digest, again=again) if ledger is not None else frozenset()
    return plan(digest, subscribers, had_it)


def prepare_variants(settings: Settings, digest: Digest, due: Plan) -> dict[str, Variant]:
    """Every variant the readers of `due` need, rendered and built into a message (see `prepare`)."""
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
    run, due = open_run(ledger, digest, subscribers, provider or settings.provider or "outbox", settings,
                        again=again, due=due)
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
    digest = load_digest(run.digest_path, settings)
    check_unchanged(run, digest, settings)
    return run, digest, prepare(Renderer(settings), digest, settings, ledger.variants(run.id))


def deliver(settings: Settings, ledger: Ledger, run: Run, digest: Digest, variants: dict[str, Variant], *,
            provider: Provider | None = None, on_progress: Callable[[Progress], None] | None = None,
            stop: threading.Event | None = None, stop_reason: str = PAUSED_BY_USER) -> Run:
    """Send what is left of `run`; return it as it ends: finished, paused (with its reason), or
    still sending (another process took it over).

    Without `provider`, the settings' one, closed at the end; a provider passed in stays open,
    its caller's to close. Setting `stop` pauses the run after the batch in flight."""
    own = provider is None
    provider = make_provider(settings) if own else provider
    try:
        if provider.name != run.provider:  # a batch sent again must go where it went before
            raise SendError(f"run {run.id} was started with {run.provider}; the settings now say "
                            f"{provider.name}", run_id=run.id)
        composer = Composer(settings, digest, variants, view_key=load_secret_key(settings))
        sender = Sender(ledger, provider, composer, rate=settings.send_rate, batch_size=settings.batch_size,
                        max_failures=settings.max_failures, stop=stop, stop_reason=stop_reason)
        return sender.send(run, on_progress)
    finally:
        if own:
            provider.close()


def resume(settings: Settings, ledger: Ledger, run_id: int, *, provider: Provider | None = None,
           on_progress: Callable[[Progress], None] | None = None,
           stop: threading.Event | None = None, stop_reason: str = PAUSED_BY_USER) -> Run:
    """Go on with run `run_id` after a pause or a crash (`reopen_run`, then `deliver`)."""
    run, digest, variants = reopen_run(settings, ledger, run_id)
    return deliver(settings, ledger, run, digest, variants, provider=provider, on_progress=on_progress,
                   stop=stop, stop_reason=stop_reason)


def send_test_copies(settings: Settings, digest: Digest, variants: dict[str, Variant],
                     addresses: Iterable[str], provider: Provider) -> Iterator[tuple[Message, Outcome]]:
    """One copy of each variant to each address, outside the ledger, with sample reader links and
    the subject prefixed `[test: variant]`; what the provider said of each, batch by batch."""
    links = preview_links(settings, digest)
    list_id = Composer(settings, digest, variants).list_id
    batch_id = uuid.uuid4().hex[:12]
    messages = []
    for address in (normalize_email(a) for a in addresses):
        for key, variant in variants.items():
            messages.append(Message(
                key=f"test-{batch_id}-{len(messages)}", to=address, sender=settings.sender,
                reply_to=settings.reply_to, subject=f"[test: {key}] {variant.subject}",
                html=variant.html.fill(links), text=variant.text.fill(links),
                headers={"List-Unsubscribe": f"<{links['unsubscribe_url']}>",
                         "List-Unsubscribe-Post": "List-Unsubscribe=One-Click", "List-Id": list_id},
                tags={"issue": digest.slug, "variant": key, "test": "yes"}))
    for start in range(0, len(messages), settings.batch_size):
        chunk = messages[start:start + settings.batch_size]
        yield from zip(chunk, provider.send(chunk, f"test-{batch_id}-{start}").outcomes)
