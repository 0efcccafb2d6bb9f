"""Notifications to the writer: with `notify = "you@example.com"` in the settings, a short
plain-text email through the configured provider each time a scheduled send finishes, pauses,
finds nothing ready on its day, or leaves a digest unsent because it fails its checks.

A notification is best effort: one the provider refuses is logged, and the send it reports on is
not affected (a run paused by the provider's quota will usually not get its notification through
that provider either: the scheduler's log says so too).
"""

from __future__ import annotations

import datetime as dt
import html
import logging
import time
import uuid
from collections.abc import Iterable

from .config import Settings
from .errors import NewsletterError
from .ledger import Ledger, Run, RunStatus, State

log = logging.getLogger("newsletter.notify")
SHOWN_FAILURES = 20  # failed readers listed in a notification; `runs show` lists them all
RETRY_WAITS = (1.0, 4.0, None)  # seconds before trying a notification again; None: give up


def send_notification(settings: Settings, subject: str, lines: Iterable[str]) -> bool:
    """Email `lines` to the writer (`settings.notify`); False if there is no one to tell or the
    provider would not take it (logged)."""
    from .providers import Message, make_provider

    if not settings.notify:
        return False
    text = "\n".join(lines).rstrip() + "\n"
    key = f"notify-{uuid.uuid4().hex}"
    message = Message(key=key, to=settings.notify, sender=settings.sender,
                      subject=f"[{settings.name}] {subject}", text=text,
                      html=f'<pre style="font: 14px/1.5 ui-monospace, Menlo, Consolas, monospace; '
                           f'white-space: pre-wrap">{html.escape(text)}</pre>')
    try:
        provider = make_provider(settings)
        try:
            outcome = _send(provider, message, key)
        finally:
            provider.close()
    except NewsletterError as e:
        log.error("notification %r not sent to the writer: %s", subject, e)
        return False
    if not outcome.ok:
        log.error("notification %r not sent to the writer: %s", subject, outcome.error)
        return False
    log.info("notified the writer: %s", subject)
    return True


def _send(provider, message, key: str):
    """One notification, tried again (as the same request) after a failure that may pass."""
    from .errors import RateLimited, Unavailable

    for wait in RETRY_WAITS:
        try:
            return provider.send([message], idempotency_key=key).outcomes[0]
        except (RateLimited, Unavailable) as e:
            if wait is None:
                raise
            log.info("notification not sent yet (%s); trying again in %g s", e, wait)
            time.sleep(min(30.0, getattr(e, "retry_after", None) or wait))
    raise AssertionError("unreachable")


def resume_command(settings: Settings, run: Run) -> str:
    config = f"--config {settings.config_path} " if settings.config_path else ""
    return f"newsletter {config}resume {run.id}"


def run_ended(settings: Settings, ledger: Ledger, run: Run, *, retry_at: dt.datetime | None = None,
              retries: int = 0) -> bool:
    """Tell the writer how a run the scheduler sent ended: finished (counts per variant, the
    failures) or paused (why; when the scheduler tries again, or the command to resume)."""
    from .send import describe_variant

    counts = ledger.counts(run.id)
    total = sum(counts.values())
    summary = (f"sent {counts['sent']:,}, failed {counts['failed']:,}, skipped {counts['skipped']:,}"
               f" of {plural(total, 'reader')}")
    if run.status == RunStatus.FINISHED:
        subject = f"Sent: {run.subject}"
        lines = [f"{run.issue} went out (run {run.id}, via {run.provider}).", "", summary]
    elif run.status == RunStatus.PAUSED:
        left = counts["queued"] + counts["sending"]
        subject = f"Paused: {run.subject}"
        lines = [f"Sending {run.issue} (run {run.id}, via {run.provider}) paused: {run.reason}", "",
                 f"{summary}; {left:,} not sent yet.", ""]
        if retry_at is not None:
            lines.append(f"The scheduler tries again at {retry_at:%Y-%m-%d %H:%M} UTC "
                         f"(retry {retries + 1} of {retries_allowed()}). To go on now instead:")
        elif run.transient:
            lines.append(f"The scheduler tried again {plural(retries, 'time')} and leaves it paused now. "
                         "When the cause is fixed:")
        else:
            lines.append("It stays paused until you resume it, once the cause is fixed:")
        lines += ["", f"    {resume_command(settings, run)}"]
    else:
        return False
    by_variant = ledger.counts_by_variant(run.id)
    if len(by_variant) > 1 or run.status == RunStatus.FINISHED:
        lines += ["", "Per variant:"]
        for key, c in by_variant.items():
            lines.append(f"  {describe_variant(settings, key)}: sent {c['sent']:,}, failed {c['failed']:,}, "
                         f"skipped {c['skipped']:,}")
    failed = ledger.problems(run.id, limit=SHOWN_FAILURES, states=(State.FAILED,))
    if failed:
        lines += ["", "Failed:"]
        lines += [f"  {email or '(erased reader)'}: {reason}" for email, _state, reason in failed]
    if counts["failed"] or counts["skipped"]:
        lines += ["", f"`newsletter runs show {run.id}` lists every failed and skipped reader."]
    return send_notification(settings, subject, lines)


def nothing_ready(settings: Settings, today: dt.date, *, not_yet: list[str], unfinished: list[str]) -> bool:
    lines = [f"Nothing was sent on {today:%A %Y-%m-%d}: no digest in {settings.digests_dir} has "
             "`status: ready`, a date that has come, and no finished send."]
    if not_yet:
        lines += ["", "Ready, for a later date: " + ", ".join(not_yet)]
    if unfinished:
        lines += ["", "Ready, with a send that is not finished (`newsletter runs`): " + ", ".join(unfinished)]
    return send_notification(settings, f"Nothing to send on {today:%A %d %B}", lines)


def not_sent(settings: Settings, problems: list[str]) -> bool:
    """Digests the scheduler did not send because they fail their checks (file and line)."""
    lines = [f"{plural(len(problems), 'digest')} could not be sent:", ""]
    lines += [f"  {problem}" for problem in problems]
    lines += ["", "Fix them (`newsletter check FILE` shows every problem); the next scheduled send "
              "sends them when they are due."]
    return send_notification(settings, f"Not sent: {plural(len(problems), 'digest')} failed the checks", lines)


def plural(n: int, one: str) -> str:
    return f"{n:,} {one}" + ("" if n == 1 else "s")


def retries_allowed() -> int:
    from .schedule import BACKOFF

    return len(BACKOFF)
