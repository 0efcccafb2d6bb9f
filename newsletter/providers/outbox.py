"""The outbox: each message becomes an .eml file in a folder. No account needed."""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import Unavailable
from ..files import atomic_writer
from . import BatchResult, Message, Outcome
from .mime import to_mime


class OutboxProvider:
    name = "outbox"
    idempotent = True  # a message is written to the same file however often it is sent

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def path_for(self, message: Message) -> Path:
        safe = re.sub(r"[^\w.@+-]", "_", message.to)
        return self.folder / f"{message.key}-{safe}.eml"

    def send(self, messages: list[Message], idempotency_key: str) -> BatchResult:
        outcomes = []
        for message in messages:
            mail = to_mime(message)
            path = self.path_for(message)
            try:
                with atomic_writer(path, binary=True) as f:
                    f.write(mail.as_bytes())
            except OSError as e:
                raise Unavailable(f"cannot write to the outbox {self.folder}: {e.strerror}") from None
            outcomes.append(Outcome(True, message_id=mail["Message-ID"]))
        return BatchResult(outcomes)

    def close(self) -> None:
        pass
