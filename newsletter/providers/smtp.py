"""SMTP through the standard library: one connection for a whole batch."""

from __future__ import annotations

import smtplib
import ssl

from ..errors import Rejected, Unavailable
from . import BatchResult, Message, Outcome
from .mime import Encoded, encode


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
        stop: _Stop | None = None
        try:
            for message in messages:
                try:
                    outcomes.append(self._send_one(server, message))
                except _Stop as e:
                    stop = e
                    break
        finally:
            try:
                server.quit()
            except (OSError, smtplib.SMTPException):
                pass
        if stop is None:
            return BatchResult(outcomes)
        # The server refused to go on: what it took is recorded, the rest waits, untried.
        outcomes += [Outcome(False, error=f"not tried: {stop.reason}", retry=True, tried=False)
                     for _ in messages[len(outcomes):]]
        return BatchResult(outcomes, pause=None if stop.temporary else stop.reason,
                           trouble=stop.reason if stop.temporary else None)

    @staticmethod
    def _send_one(server: smtplib.SMTP, message: Message) -> Outcome:
        """One message; raises _Stop when the server refuses the session, not the recipient."""
        mail = encode(message)
        try:
            refused = _send_message(server, mail)
        except smtplib.SMTPRecipientsRefused as e:
            code, text = next(iter(e.recipients.values()))
            return Outcome(False, error=f"{code} {text.decode(errors='replace')}", retry=code < 500)
        except smtplib.SMTPSenderRefused as e:  # MAIL FROM refused: the same for every reader
            raise _Stop(f"SMTP server refused the sender: {_reply(e)}", temporary=e.smtp_code < 500) from None
        except smtplib.SMTPNotSupportedError as e:  # e.g. an international address without SMTPUTF8
            return Outcome(False, error=f"the SMTP server cannot take this message: {e}")
        except smtplib.SMTPResponseException as e:
            return Outcome(False, error=_reply(e), retry=e.smtp_code < 500)
        except (OSError, smtplib.SMTPServerDisconnected) as e:
            raise _Stop(f"SMTP connection lost: {e}", temporary=True) from None
        if refused:
            code, text = next(iter(refused.values()))
            return Outcome(False, error=f"{code} {text.decode(errors='replace')}", retry=code < 500)
        return Outcome(True, message_id=mail.message_id)

    def close(self) -> None:
        pass


def _send_message(server: smtplib.SMTP, mail: Encoded) -> dict:
    """What `server.send_message` does with the message these bytes are: the envelope from its
    From and To, and SMTPUTF8 with BODY=8BITMIME for an international address (smtplib raises
    SMTPNotSupportedError, sending nothing, if the server does not offer SMTPUTF8)."""
    options = ("SMTPUTF8", "BODY=8BITMIME") if mail.international else ()
    return server.sendmail(mail.envelope_from, mail.envelope_to, mail.data, options)


class _Stop(Exception):
    def __init__(self, reason: str, temporary: bool):
        super().__init__(reason)
        self.reason, self.temporary = reason, temporary


def _reply(e: smtplib.SMTPResponseException) -> str:
    text = e.smtp_error.decode(errors="replace") if isinstance(e.smtp_error, bytes) else str(e.smtp_error)
    return f"{e.smtp_code} {text}"
