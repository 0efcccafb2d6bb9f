"""Email providers: the send engine's only way out. Each sends a batch and says, per message,
what happened; whole-request failures are ProviderError subclasses (see errors.py)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Protocol

from ..config import Settings
from ..errors import ConfigError


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


def make_provider(settings: Settings, env=os.environ) -> Provider:
    """The provider the settings name; the outbox when none is configured."""
    name = settings.provider or "outbox"
    if name == "resend":
        from .resend import ResendProvider

        key = env.get("RESEND_API_KEY", "")
        if not key:
            raise ConfigError("provider is resend but $RESEND_API_KEY is not set", key="provider")
        return ResendProvider(key, timeout=settings.request_timeout,
                              api_url=env.get("RESEND_API_URL") or None)
    if name == "smtp":
        from .smtp import SmtpProvider

        return SmtpProvider(settings.smtp_host, settings.smtp_port, security=settings.smtp_security,
                            username=settings.smtp_username, password=env.get("NEWSLETTER_SMTP_PASSWORD"),
                            timeout=settings.request_timeout)
    from .outbox import OutboxProvider

    return OutboxProvider(settings.outbox_dir)
