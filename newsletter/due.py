"""Which digests are due: what a scheduled send (and `newsletter send-due`) picks from `digests_dir`.

A digest is due when its front matter says `status: ready`, its `date` has come (a ready digest
without a date is due at once), and no run of it has finished. Drafts are never looked at beyond
their front matter; a ready digest that fails its checks is reported with file and line, and the
others still go. Oldest first: by date, then by file name.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

from . import frontmatter
from .config import Settings
from .digest import Checker, Digest, Source, load_digest, read_source
from .errors import DigestError, Problem
from .ledger import Ledger, RunStatus


@dataclass
class DuePass:
    """The outcome of one look at `digests_dir`."""

    due: list[Digest] = field(default_factory=list)  # checked, oldest first
    failed: list[Problem] = field(default_factory=list)  # ready digests that fail their checks
    unfinished: list[str] = field(default_factory=list)  # ready issues with a run still open
    not_yet: list[str] = field(default_factory=list)  # ready issues whose date is still to come


def find_due(settings: Settings, ledger: Ledger, today: dt.date) -> DuePass:
    """The digests in `settings.digests_dir` that a send on `today` must send."""
    found = DuePass()
    folder = settings.digests_dir
    if not folder.is_dir():
        found.failed.append(Problem(str(folder), None, "digests_dir is not a folder"))
        return found
    ready: list[tuple[dt.date, str, Path, Source]] = []
    for path in sorted(folder.glob("*.md")):
        status, date, problems, source = read_front_matter(path)
        if status != "ready":
            continue
        if problems:  # a ready digest whose front matter cannot be read: say so, like check does
            found.failed.extend(problems)
            continue
        if date is not None and date > today:
            found.not_yet.append(path.stem)
            continue
        ready.append((date or dt.date.min, path.name, path, source))
    for _date, _name, path, source in sorted(ready, key=lambda r: r[:2]):
        runs = ledger.runs(path.stem)
        if any(r.status == RunStatus.FINISHED for r in runs):
            continue  # sent: a ready digest stays ready in git after it went out
        if any(r.status in (RunStatus.SENDING, RunStatus.PAUSED) for r in runs):
            found.unfinished.append(path.stem)  # the scheduler resumes those; never a second run
            continue
        try:
            found.due.append(load_digest(path, settings, source))  # the front matter is read once
        except DigestError as e:
            found.failed.extend(e.problems)
    return found


def read_front_matter(path: Path) -> tuple[str, dt.date | None, list[Problem], Source | None]:
    """A digest's `status` and `date`, and the file as read, which a full load goes on from:
    drafts cost next to nothing, and a due digest's front matter is read once."""
    try:
        source = read_source(path)
    except DigestError as e:
        return "ready", None, e.problems, None  # unreadable: reported rather than silently skipped
    if source.front is None:
        return "ready", None, source.check.errors, None
    check = Checker(path)
    meta, key_lines = source.front
    status = frontmatter.status(meta.get("status"), key_lines.get("status", 1), check)
    if meta.get("status") is not None and check.errors:
        return "ready", None, check.errors, None  # a misspelt status must not hide an issue meant to go
    date = frontmatter.date(meta.get("date"), key_lines.get("date", 1), check)
    return status, date, check.errors, source
