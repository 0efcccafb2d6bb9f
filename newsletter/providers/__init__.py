"""Email providers: the send engine's only way out. Each sends a batch and says, per message,
what happened; whole-request failures are ProviderError subclasses (see errors.py)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ..config import Settings
from ..errors import ConfigError

if TYPE_CHECKING:
    from .mime import Template


class Message:
    """One reader's email as a provider takes it.

    A message from the send engine carries its variant's `template` (the message encoded once)
    and this reader's `links`: its `html` and `text` are the template's parts filled with them,
    made when read and not kept, so a batch in memory is a few hundred bytes a reader, not the
    70 KB of its HTML. The outbox and SMTP write the bytes from the template; Resend reads `html`.
    Other messages (a signup's confirmation, the scheduler's reports) give `html` and `text`."""

    __slots__ = ("key", "to", "sender", "subject", "_html", "_text", "reply_to", "headers", "tags",
                 "template", "links")

    def __init__(self, key: str, to: str, sender: str, subject: str, html: str | None = None,
                 text: str | None = None, reply_to: str | None = None, headers: dict[str, str] | None = None,
                 tags: dict[str, str] | None = None, template: Template | None = None,
                 links: dict[str, str] | None = None):
        if template is None and (html is None or text is None):
            raise TypeError("a Message needs html and text, or a template")
        self.key = key  # unique per delivery: names outbox files, and links answers to ledger rows
        self.to, self.sender, self.subject, self.reply_to = to, sender, subject, reply_to
        self._html, self._text = html, text
        self.headers = headers if headers is not None else {}  # List-Unsubscribe, List-Id, ...
        self.tags = tags if tags is not None else {}
        self.template, self.links = template, links if links is not None else {}

    @property
    def html(self) -> str:
        return self._html if self._html is not None else self.template.html.fill(self.links)

    @property
    def text(self) -> str:
        return self._text if self._text is not None else self.template.text.fill(self.links)

    def __repr__(self) -> str:
        return f"Message(key={self.key!r}, to={self.to!r}, subject={self.subject!r})"


@dataclass
class Outcome:
    ok: bool
    message_id: str | None = None
    error: str | None = None
    retry: bool = False  # a temporary refusal of this one message: try it again later
    tried: bool = True  # False: never offered to the provider (does not use up an attempt)


@dataclass
class BatchResult:
    outcomes: list[Outcome]
    wait: float = 0.0  # seconds the provider asks us to wait before the next request
    pause: str | None = None  # the provider refused the rest for good (e.g. the sender): pause the run
    trouble: str | None = None  # a temporary refusal of the rest: back off as for a failed request


class Provider(Protocol):
    name: str
    idempotent: bool  # a batch sent twice with the same key is delivered once

    def send(self, messages: list[Message], idempotency_key: str) -> BatchResult: ...

    def close(self) -> None: ...


def check_provider(settings: Settings, env=os.environ) -> None:
    """Refuse settings the provider cannot send with (a missing key, half the SMTP login), so
    that `send --dry-run` says so, and a real send says so before it asks or opens a run."""
    name = settings.provider or "outbox"
    if name == "resend" and not env.get("RESEND_API_KEY"):
        raise ConfigError("provider is resend but $RESEND_API_KEY is not set", key="provider")
    if name == "smtp":
        if not (settings.smtp_host or "").strip():
            raise ConfigError("provider is smtp but smtp_host is empty", key="smtp_host")
        password = env.get("NEWSLETTER_SMTP_PASSWORD")
        if settings.smtp_username and not password:
            raise ConfigError("smtp_username is set but $NEWSLETTER_SMTP_PASSWORD "
                              "is not set", key="smtp_username")
        if password and not settings.smtp_username:
            raise ConfigError("$NEWSLETTER_SMTP_PASSWORD is set but smtp_username is not: "
                              "the password would never be used", key="smtp_username")


def make_provider(settings: Settings, env=os.environ) -> Provider:
    """The provider the settings name; the outbox when none is configured."""
    check_provider(settings, env)
    name = settings.provider or "outbox"
    if name == "resend":
        from .resend import ResendProvider

        return ResendProvider(env["RESEND_API_KEY"], timeout=settings.request_timeout,
                              api_url=env.get("RESEND_API_URL") or None)
    if name == "smtp":
        from .smtp import SmtpProvider

        return SmtpProvider(settings.smtp_host, settings.smtp_port, security=settings.smtp_security,
                            username=settings.smtp_username, password=env.get("NEWSLETTER_SMTP_PASSWORD"),
                            timeout=settings.request_timeout)
    from .outbox import OutboxProvider

    return OutboxProvider(settings.outbox_dir)
