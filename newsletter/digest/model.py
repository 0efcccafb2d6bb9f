"""What a digest file becomes: a `Digest` of sections, round-up items and footnotes.

Each section's HTML and plain text keep footnote references as placeholders (`\\x02label\\x03`),
so that a variant for any set of categories only has to number the notes it keeps; see `render.py`.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from ..errors import Problem

REF_OPEN, REF_CLOSE = "\x02", "\x03"
REF_RE = re.compile("\x02([^\x03]*)\x03")


@dataclass
class Footnote:
    label: str
    url: str
    title: str
    source_html: str  # the definition's first paragraph: the linked title as written
    source_text: str
    quote_html: str
    quote_text: str
    line: int

    @property
    def domain(self) -> str:
        host = re.sub(r"^[a-z][a-z0-9+.-]*://", "", self.url, flags=re.I).split("/")[0]
        return host.split("@")[-1].split(":")[0].removeprefix("www.")


@dataclass
class RoundupItem:
    title_html: str
    title_text: str
    source_html: str
    source_text: str
    body_html: str
    body_text: str
    line: int


@dataclass
class Section:
    """The opening (TL;DR and intro), a story, or the round-ups."""

    kind: str  # "opening" | "story" | "roundups"
    line: int
    title_html: str = ""
    title_text: str = ""
    anchor: str = ""
    categories: tuple[str, ...] | None = None  # None: for every reader
    source_html: str = ""
    source_text: str = ""
    tldr_html: list[str] = field(default_factory=list)
    tldr_text: list[str] = field(default_factory=list)
    # The opening's TL;DR lines: a line's own categories (`text:` + `categories:`), or None: the
    # line follows the stories whose notes it cites (see render.select).
    tldr_categories: list[tuple[str, ...] | None] = field(default_factory=list)
    body_html: str = ""
    body_text: str = ""
    entries: list[RoundupItem] = field(default_factory=list)

    @cached_property
    def cited_labels(self) -> list[str]:
        """Footnote labels in the order a reader meets them in this section."""
        # The same order as the templates show them: title, source line, TL;DR, body, round-ups.
        parts = [self.title_html, self.source_html, *self.tldr_html, self.body_html]
        for item in self.entries:
            parts += [item.title_html, item.source_html, item.body_html]
        return [m.group(1) for part in parts for m in REF_RE.finditer(part)]


@dataclass
class Digest:
    path: Path
    title: str
    subtitle: str
    date: dt.date | None
    author: str
    preheader: str
    footnote_mode: str  # "inline" | "end"
    opening: Section
    stories: list[Section]  # every '## ' section in order, the round-ups included (see .kind)
    footnotes: dict[str, Footnote]
    status: str = "draft"  # frontmatter.STATUSES: only a ready digest is sent on schedule
    warnings: list[Problem] = field(default_factory=list)
    # `subjects:` / `preheaders:` of the front matter, in the order written: (categories, text)
    subjects: list[tuple[frozenset[str], str]] = field(default_factory=list)
    preheaders: list[tuple[frozenset[str], str]] = field(default_factory=list)
    tldr_line: int = 1  # where the front matter's `tldr` is, for what `check` says of it

    def subject_for(self, categories) -> str:
        """The subject a reader of `categories` (None: every story) gets: see `_for_categories`."""
        return _for_categories(self.subjects, categories) or self.title

    def preheader_for(self, categories) -> str:
        return _for_categories(self.preheaders, categories) or self.preheader or self.subtitle

    @property
    def slug(self) -> str:
        return self.path.stem

    @property
    def sections(self) -> list[Section]:
        return [self.opening, *self.stories]


def _for_categories(entries: list[tuple[frozenset[str], str]], categories) -> str | None:
    """The entry written for exactly this set of categories, else the first (in the order
    written) whose categories the reader all has; None for a reader of every story."""
    if categories is None:
        return None
    wanted = frozenset(categories)
    exact = next((text for cats, text in entries if cats == wanted), None)
    return exact or next((text for cats, text in entries if cats <= wanted and cats), None)
