"""SMTP through the standard library: one connection for a whole batch."""

from __future__ import annotations

import smtplib
import ssl

from ..errors import Rejected, Unavailable
from . import BatchResult, Message, Outcome
from .mime import to_mime


class SmtpProvider:
    name = "smtp"
    idempotent = False  # SMTP has no idempotency: a batch cut off mid-way may repeat on resume

    def __init__(self, host: str, port: int, *, security: str = "starttls", username: str | None = None,
                 password: str | None = None, timeout: float = 30.0):
        self.host, self.port, self.security = host, port, security
        self.username, self.password, self.timeout = username, password, timeout

    def _connect(self) -> smtplib.SMTP:
        try:
            if self.security == "ssl":
                server: smtplib.SMTP = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout,
                                                       context=ssl.create_default_context())
            else:
                server = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
                if self.security == "starttls":
                    server.starttls(context=ssl.create_default_context())
            if self.username:
                server.login(self.username, self.password or "")
            return server
        except smtplib.SMTPAuthenticationError as e:
            raise Rejected(f"SMTP login to {self.host} refused: {_reply(e)}") from None
        except smtplib.SMTPNotSupportedError as e:
            raise Rejected(f"SMTP server {self.host}: {e} (set smtp_security)") from None
        except (OSError, smtplib.SMTPException) as e:
            raise Unavailable(f"cannot connect to SMTP server {self.host}:{self.port}: {e}") from None

    def send(self, messages: list[Message], idempotency_key: str) -> BatchResult:
        server = self._connect()
        outcomes: list[Outcome] = []
        try:
            for message in messages:
                outcomes.append(self._send_one(server, message))
                if outcomes[-1].retry and "connection" in (outcomes[-1].error or ""):
                    break  # the connection is gone: the rest are tried again later
        finally:
            try:
                server.quit()
            except (OSError, smtplib.SMTPException):
                pass
        outcomes += [Outcome(False, error="not tried: the SMTP connection was lost", retry=True)
                     for _ in messages[len(outcomes):]]
        return BatchResult(outcomes)

    @staticmethod
    def _send_one(server: smtplib.SMTP, message: Message) -> Outcome:
        mail = to_mime(message)
        try:
            refused = server.send_message(mail)
        except smtplib.SMTPRecipientsRefused as e:
            code, text = next(iter(e.recipients.values()))
            return Outcome(False, error=f"{code} {text.decode(errors='replace')}", retry=code < 500)
        except smtplib.SMTPResponseException as e:
            return Outcome(False, error=_reply(e), retry=e.smtp_code < 500)
        except (OSError, smtplib.SMTPServerDisconnected) as e:
            return Outcome(False, error=f"connection lost: {e}", retry=True)
        if refused:
            code, text = next(iter(refused.values()))
            return Outcome(False, error=f"{code} {text.decode(errors='replace')}", retry=code < 500)
        return Outcome(True, message_id=mail["Message-ID"])

    def close(self) -> None:
        pass


def _reply(e: smtplib.SMTPResponseException) -> str:
    text = e.smtp_error.decode(errors="replace") if isinstance(e.smtp_error, bytes) else str(e.smtp_error)
    return f"{e.smtp_code} {text}"
