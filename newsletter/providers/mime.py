"""A `Message` as a real RFC 5322 multipart/alternative email, for the outbox and SMTP."""

from __future__ import annotations

from email import policy
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr


def to_mime(message: "Message") -> EmailMessage:  # noqa: F821 - avoids an import cycle
    international = not (message.to + message.sender).isascii()
    mail = EmailMessage(policy=policy.SMTPUTF8 if international else policy.SMTP)
    domain = parseaddr(message.sender)[1].rpartition("@")[2] or "localhost"
    mail["Message-ID"] = make_msgid(idstring=message.key, domain=domain)
    mail["Date"] = formatdate(localtime=False, usegmt=True)
    mail["From"] = message.sender
    mail["To"] = message.to
    if message.reply_to:
        mail["Reply-To"] = message.reply_to
    mail["Subject"] = message.subject
    for name, value in message.headers.items():
        mail[name] = value
    mail.set_content(message.text, cte="quoted-printable")
    mail.add_alternative(message.html, subtype="html", cte="quoted-printable")
    return mail
