"""Everything `newsletter` raises on purpose, in one tree.

    NewsletterError                 base; `str(e)` is the one line a user sees
    ├── ConfigError                 newsletter.toml or a NEWSLETTER_* variable (.path, .key)
    ├── DigestError                 a digest file is not fit to send (.problems: list[Problem])
    ├── RenderError                 templates or MJML failed (a bug or a broken custom template)
    ├── StoreError                  the database cannot be opened, migrated or used ("database: ...",
    │   │                           the driver's error as __cause__)
    │   └── StoreConflict           a write broke a unique or other integrity rule, e.g. another
    │                               process inserted the same row first: callers that expect such a
    │                               race catch this one (the store raises it, never SQLAlchemy's)
    ├── SubscriberError             a reader or an import row cannot be stored
    ├── MailboxError                the bounce mailbox cannot be read: not configured, unreachable,
    │                               login refused, folder missing (.host, .folder; never the password)
    ├── IssueNotFound               no run of that issue was ever started (`stats`; .issue)
    ├── ProviderError               the email provider refused or failed a whole request
    │   ├── RateLimited             wait and retry (.retry_after seconds)
    │   ├── Unavailable             5xx, timeout, refused connection: retry with backoff
    │   ├── QuotaExceeded           a daily or monthly quota: pause now; later, the scheduler retries
    │   └── Rejected                bad key, bad sender, ...: no retry can fix it, pause (.reason)
    └── SendError                   a send run cannot start or go on (.run_id, when a run is concerned)
        ├── AlreadySent             the issue has a finished run: send it again only on purpose
        ├── RunUnfinished           the issue has a run that is sending or paused: resume or cancel it
        ├── RunBusy                 another process holds the run's lease: it is sending it now
        └── RunNotFound             there is no run with that id

The CLI turns any of these into `error: <message>` and an exit code from `ExitCode`;
nothing else reaches the user as a traceback.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from pathlib import Path


class ExitCode(enum.IntEnum):
    OK = 0
    ERROR = 1  # a NewsletterError: bad input, refused by the provider, ...
    USAGE = 2  # click's own code for bad options
    INTERNAL = 3  # a bug: an exception we did not expect
    INTERRUPTED = 130


class NewsletterError(Exception):
    """Base of every error `newsletter` raises on purpose."""

    exit_code = ExitCode.ERROR


class ConfigError(NewsletterError):
    def __init__(self, message: str, *, path: Path | str | None = None, key: str | None = None):
        self.path = str(path) if path is not None else None
        self.key = key
        where = f"{self.path}: " if self.path else ""
        super().__init__(f"{where}{message}")


@dataclass(frozen=True)
class Problem:
    """One finding of the digest checks: an error stops the send, a warning does not."""

    file: str
    line: int | None
    message: str
    severity: str = "error"  # "error" | "warning"

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.message}"


class DigestError(NewsletterError):
    def __init__(self, problems: list[Problem]):
        self.problems = problems
        first = problems[0]
        self.file, self.line = first.file, first.line
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(f"{first}{more}")


class RenderError(NewsletterError):
    pass


class StoreError(NewsletterError):
    pass


class StoreConflict(StoreError):
    pass


class SubscriberError(NewsletterError):
    pass


class MailboxError(NewsletterError):
    def __init__(self, message: str, *, host: str | None = None, folder: str | None = None):
        self.host, self.folder = host, folder


class IssueNotFound(NewsletterError):
    def __init__(self, message: str, *, issue: str):
        self.issue = issue
        super().__init__(message)


class ProviderError(NewsletterError):
    pass


class RateLimited(ProviderError):
    def __init__(self, message: str, retry_after: float | None = None):
        self.retry_after = retry_after
        super().__init__(message)


class Unavailable(ProviderError):
    pass


class QuotaExceeded(ProviderError):
    pass


class Rejected(ProviderError):
    def __init__(self, message: str, reason: str | None = None):
        self.reason = reason or message
        super().__init__(message)


class SendError(NewsletterError):
    def __init__(self, message: str, *, run_id: int | None = None):
        self.run_id = run_id
        super().__init__(message)


class AlreadySent(SendError):
    """`.run_id`: the finished run. A scheduler skips the issue; a user says `--again`."""


class RunUnfinished(SendError):
    """`.run_id`: the run of the issue that is sending or paused (None if it ended meanwhile)."""


class RunBusy(SendError):
    """`.run_id`: the run another process is sending; try again once its lease ends."""


class RunNotFound(SendError):
    """`.run_id`: the id asked for."""


_UNPRINTABLE_RE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def shorten(value: object, width: int = 80) -> str:
    """A value as a message shows it: one line, control characters escaped, at most `width` long."""
    text = _UNPRINTABLE_RE.sub(lambda m: ascii(m.group())[1:-1], str(value)[:width * 8])
    return text if len(text) <= width else text[:width - 1] + "…"
