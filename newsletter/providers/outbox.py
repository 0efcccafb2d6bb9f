"""The outbox: each message becomes an .eml file in a folder. No account needed."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from ..errors import Unavailable
from ..files import atomic_writer
from . import BatchResult, Message, Outcome
from .mime import encode

# A file name holds at most 255 bytes, and atomic_writer adds about 15 for its temporary file:
# an address may be 254 characters (more bytes in UTF-8), so only its start is kept.
READABLE_BYTES = 100
UNSAFE = re.compile(r"[^\w.@+-]")  # path separators, `..`'s neighbours, control characters, ...


class OutboxProvider:
    name = "outbox"
    idempotent = True  # a message is written to the same file however often it is sent

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def path_for(self, message: Message) -> Path:
        """`<key>-<address>` made safe and cut short, then a hash of both: the same message always
        gets the same file, two messages never share one, and no name leaves the folder."""
        readable = UNSAFE.sub("_", f"{message.key}-{message.to}").encode()[:READABLE_BYTES]
        readable = readable.decode(errors="ignore").strip(".")  # a cut never splits a character
        unique = hashlib.sha256(f"{message.key}\x00{message.to}".encode()).hexdigest()[:12]
        return self.folder / f"{readable}-{unique}.eml"

    def send(self, messages: list[Message], idempotency_key: str) -> BatchResult:
        outcomes = []
        for message in messages:
            mail = encode(message)
            path = self.path_for(message)
            try:
                with atomic_writer(path, binary=True) as f:
                    f.write(mail.data)
            except OSError as e:
                raise Unavailable(f"cannot write to the outbox {self.folder}: {e.strerror}") from None
            outcomes.append(Outcome(True, message_id=mail.message_id))
        return BatchResult(outcomes)

    def close(self) -> None:
        pass
