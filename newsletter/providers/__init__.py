"""Email providers: the send engine's only way out. Each sends a batch and says, per message,
what happened; whole-request failures are ProviderError subclasses (see errors.py)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from ..config import Settings
from ..errors import ConfigError

if TYPE_CHECKING:
    from .mime import Template


@dataclass
class Message:
    key: str  # unique per delivery: names outbox files, and links answers to ledger rows
    to: str
    sender: str
    subject: str
    html: str
    text: str
    reply_to: str | None = None
    headers: dict[str, str] = field(default_factory=dict)  # List-Unsubscribe, List-Id, ...
    tags: dict[str, str] = field(default_factory=dict)
    # The variant's message encoded once, and this reader's values for its placeholders (html and
    # text are the template's parts filled with them): the outbox and SMTP write its bytes from these.
    template: Template | None = None
    links: dict[str, str] = field(default_factory=dict)


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
