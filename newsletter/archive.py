"""The archive of sent issues: each issue's digest as it was sent, kept in the database.

    record_issue(engine, digest, source)   when a run opens (`send.open_run`): the text it sends
    Archive(engine, settings)              what the web archive reads back

The web archive renders from the recorded text, never from the digest files, so `newsletter
serve` needs none of them and may run on another machine. The text is parsed by the very
function `newsletter check` and `send` use, so a page shows the model that was sent.

An issue is *sent* once one of its runs has finished: one that is still going, or was only
ever cancelled, is not in the archive. A later `send --again` of a changed file records the
new text, which the archive then shows.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Generic, Hashable, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from .config import Settings
from .digest import REF_RE, Checker, Digest, parse_digest
from .errors import DigestError, StoreError
from .ledger import Ledger, RunStatus
from .links import find_view
from .send import digest_categories, possible_variants, variant_for
from .store import issues, send_runs, utcnow

log = logging.getLogger("newsletter.archive")
T = TypeVar("T")
PAGES = 48  # parsed digests and rendered pages kept per process: a few dozen of each
SMALL = 1024  # summaries and run variants: a few hundred bytes each
MAX_VIEW = 64  # a view token is 22 characters; anything much longer is not one
TEXT_REF_RE = re.compile(r"\[" + REF_RE.pattern + r"\]")  # a footnote reference in plain text: [\x02label\x03]


# -- recording -------------------------------------------------------------------------------------

def record_issue(engine: Engine, digest: Digest, source: bytes) -> None:
    """Store `source`, the digest file's bytes as the run sends them, as the issue's text.

    The time is kept when the text is the same (`send --again` of an unchanged file): it says
    when the archived text last changed, which the feed shows as the entry's update."""
    now = utcnow()
    values = {"slug": digest.slug, "title": digest.title,
              "date": digest.date.isoformat() if digest.date else None,
              "source": source.decode("utf-8"), "digest_sha256": hashlib.sha256(source).hexdigest(),
              "updated_at": now}
    insert = (postgresql if engine.dialect.name == "postgresql" else sqlite).insert(issues).values(values)
    changed = insert.excluded.digest_sha256 != issues.c.digest_sha256
    statement = insert.on_conflict_do_update(index_elements=[issues.c.slug], set_={
        "title": insert.excluded.title, "date": insert.excluded.date, "source": insert.excluded.source,
        "digest_sha256": insert.excluded.digest_sha256,
        "updated_at": sa.case((changed, insert.excluded.updated_at), else_=issues.c.updated_at)})
    with engine.begin() as conn:
        conn.execute(statement)


# -- reading -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SentIssue:
    """An issue with at least one finished run, as recorded."""

    slug: str
    title: str
    date: dt.date | None  # the front matter's
    digest_sha256: str
    updated_at: dt.datetime  # when the recorded text last changed
    first_sent: dt.datetime  # when its first run finished
    last_sent: dt.datetime  # ... and its latest
    source: str | None = None  # the digest's text; only `Archive.issue` reads it

    @property
    def day(self) -> dt.date:
        """The issue's date: the front matter's, else the day it first went out."""
        return self.date or self.first_sent.date()


@dataclass(frozen=True)
class Summary:
    """What the list and the feed show of an issue besides its title, and whom it was for."""

    dek: str
    summary: str  # the dek, else the TL;DR as text
    categories: frozenset[str]  # of its stories
    open_story: bool  # a story for every reader
    readable: bool = True  # False: the recorded text no longer reads with these settings

    def for_category(self, slug: str) -> bool:
        """Whether a reader who chose `slug` got the issue: a story in it, or one for everyone."""
        return self.readable and variant_for([slug], set(self.categories), self.open_story) is not None


class LRU(Generic[T]):
    """At most `size` values, the least recently used dropped first; safe across threads."""

    def __init__(self, size: int):
        self.size = size
        self._items: OrderedDict[Hashable, T] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, make: Callable[[], T]) -> T:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = make()  # outside the lock: two threads may both make it, and the result is the same
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._items)


def parse_source(text: str, slug: str, settings: Settings) -> Digest:
    """The digest `newsletter check` would read from a file `slug`.md holding `text`."""
    path = Path(f"{slug}.md")
    check = Checker(path)
    digest = parse_digest(text, path, settings, check)
    if check.errors:
        raise DigestError(check.errors)
    return digest


class Archive:
    """Sent issues, read back from the database and parsed once per version (see `PAGES`)."""

    def __init__(self, engine: Engine, settings: Settings):
        self.engine = engine
        self.settings = settings
        self.ledger = Ledger(engine)
        self.digests: LRU[Digest] = LRU(PAGES)  # (slug, sha256) -> Digest
        self.pages: LRU[str | bytes] = LRU(PAGES)  # for the web: (slug, sha256, variant, ...) -> HTML
        self.summaries: LRU[Summary] = LRU(SMALL)  # sha256 -> Summary
        self.run_variants: LRU[tuple[str, ...]] = LRU(SMALL)  # run id -> its deliveries' variants

    def issues(self) -> list[SentIssue]:
        """Every sent issue, newest first: by date, then by when it last went out."""
        with self.engine.connect() as conn:
            rows = conn.execute(self._query(with_source=False)).all()
        found = [_issue(row) for row in rows]
        return sorted(found, key=lambda i: (i.day, i.last_sent, i.slug), reverse=True)

    def issue(self, slug: str) -> SentIssue | None:
        """The sent issue `slug`, with its text; None if it was never sent (or is not sent yet)."""
        with self.engine.connect() as conn:
            row = conn.execute(self._query(with_source=True).where(issues.c.slug == slug)).first()
        return _issue(row) if row is not None else None

    def digest(self, issue: SentIssue) -> Digest:
        """The issue's digest, parsed as `check` reads it; raises DigestError if it no longer
        reads (a category it uses was removed from the settings since)."""
        def parse() -> Digest:
            text = issue.source if issue.source is not None else self._source(issue)
            return parse_source(text, issue.slug, self.settings)
        return self.digests.get((issue.slug, issue.digest_sha256), parse)

    def summary(self, issue: SentIssue) -> Summary:
        def make() -> Summary:
            try:
                digest = self.digest(issue)
            except DigestError as e:
                log.error("issue %s as sent no longer reads with the current settings: %s",
                          issue.slug, e.problems[0] if e.problems else e)
                return Summary("", "", frozenset(), False, readable=False)
            categories, open_story = digest_categories(digest)
            return Summary(digest.subtitle, digest.subtitle or tldr_text(digest), frozenset(categories),
                           open_story)
        return self.summaries.get(issue.digest_sha256, make)

    def view_variant(self, issue: SentIssue, digest: Digest, view: str, key: bytes) -> str | None:
        """The variant the view token `view` was made for, or None if it shows none of this issue.

        The candidates are every variant a reader could get (past 64 sets of categories only a
        selection of them: see `send.possible_variants`), then every variant the issue's runs
        actually sent."""
        if not view or len(view) > MAX_VIEW:
            return None
        found = find_view(key, issue.slug, view, possible_variants(digest))
        if found is None:
            found = find_view(key, issue.slug, view, self.sent_variants(issue.slug))
        return found

    def sent_variants(self, slug: str) -> list[str]:
        """The variants of every run of `slug`, cancelled ones included (they reached readers too)."""
        runs = self.ledger.runs(slug)
        seen: dict[str, None] = {}
        for run in runs:  # a run's deliveries are written once, when it opens: cache them
            seen |= dict.fromkeys(self.run_variants.get(run.id, lambda: tuple(self.ledger.variants(run.id))))
        return list(seen)

    def _query(self, *, with_source: bool):
        finished = (sa.select(send_runs.c.issue,
                              sa.func.min(send_runs.c.finished_at).label("first_sent"),
                              sa.func.max(send_runs.c.finished_at).label("last_sent"))
                    .where(send_runs.c.status == RunStatus.FINISHED.value)
                    .group_by(send_runs.c.issue).subquery())
        columns = [issues.c.slug, issues.c.title, issues.c.date, issues.c.digest_sha256, issues.c.updated_at,
                   finished.c.first_sent, finished.c.last_sent]
        if with_source:
            columns.append(issues.c.source)
        return sa.select(*columns).join(finished, finished.c.issue == issues.c.slug)

    def _source(self, issue: SentIssue) -> str:
        with self.engine.connect() as conn:
            text = conn.execute(sa.select(issues.c.source).where(
                issues.c.slug == issue.slug, issues.c.digest_sha256 == issue.digest_sha256)).scalar()
        if text is None:  # recorded again since the list was read: the caller reads it anew
            raise StoreError(f"issue {issue.slug} changed while it was read")
        return text


def tldr_text(digest: Digest) -> str:
    """The opening's TL;DR as one line of text, without its footnote references."""
    items = [TEXT_REF_RE.sub("", item).strip() for item in digest.opening.tldr_text]
    return " ".join(item for item in items if item)


def _issue(row) -> SentIssue:
    return SentIssue(slug=row.slug, title=row.title,
                     date=dt.date.fromisoformat(row.date) if row.date else None,
                     digest_sha256=row.digest_sha256, updated_at=_utc(row.updated_at),
                     first_sent=_utc(row.first_sent), last_sent=_utc(row.last_sent),
                     source=getattr(row, "source", None))


def _utc(value: dt.datetime | str) -> dt.datetime:
    """A timestamp as an aware UTC datetime (SQLite hands an aggregate back as text)."""
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)
