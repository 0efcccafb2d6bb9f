"""Counters of requests per key and time window, kept in the database so that every server
process counts together.

A key is an HMAC of what is counted (an IP address, an email address) under the secret key: the
`rate_limits` table holds no address of anyone. Windows are fixed (an hour, a day, aligned on
the epoch); each hit is one atomic upsert that returns the new count, so two processes hitting
the same key at once both see it counted.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
from dataclasses import dataclass
from typing import Callable

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from .errors import StoreError
from .store import rate_limits, utcnow

PURPOSE = b"newsletter-rate-limit\x00"  # keeps these HMACs apart from any other use of the key
KEEP = dt.timedelta(days=2)  # windows are at most a day long: older rows count for nothing
INSERTS = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}


@dataclass(frozen=True)
class Hit:
    count: int  # hits of this key in the current window, this one included
    limit: int
    retry_after: int  # seconds until the window ends

    @property
    def allowed(self) -> bool:
        return self.count <= self.limit


class RateLimiter:
    """Counts hits per (kind, value) in windows of a given length, in the `rate_limits` table."""

    def __init__(self, engine: Engine, key: bytes, clock: Callable[[], dt.datetime] = utcnow):
        self.engine = engine
        self.clock = clock
        self._started = hmac.new(key, PURPOSE, hashlib.sha256)

    def key_for(self, kind: str, value: str) -> str:
        """`kind:` and a keyed hash of `value`: the same value always counts under one key."""
        mac = self._started.copy()
        mac.update(f"{kind}\x00{value}".encode())
        return f"{kind}:" + base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode()

    def hit(self, kind: str, value: str, *, limit: int, per: dt.timedelta) -> Hit:
        """Count one hit of `value` and say whether it is within `limit` per window of `per`."""
        now = self.clock()
        seconds, start = self._window(now, per)
        epoch = int(now.timestamp())
        key = self.key_for(kind, value)
        with self.engine.begin() as conn:
            insert = INSERTS.get(conn.dialect.name)
            if insert is None:
                raise StoreError(f"rate limits need SQLite or PostgreSQL, not {conn.dialect.name}")
            statement = insert(rate_limits).values(key=key, window_start=start, count=1)
            count = conn.execute(statement.on_conflict_do_update(
                index_elements=[rate_limits.c.key, rate_limits.c.window_start],
                set_={"count": rate_limits.c.count + 1},
            ).returning(rate_limits.c.count)).scalar_one()
            if count == 1:  # a new window: now and then, drop the ones long over
                conn.execute(sa.delete(rate_limits).where(rate_limits.c.window_start < now - KEEP))
        return Hit(count, limit, retry_after=max(1, seconds - (epoch - int(start.timestamp()))))

    def peek(self, kind: str, value: str, *, limit: int, per: dt.timedelta) -> Hit:
        """The hits of `value` in the current window, counting none: whether one more would be
        within `limit` (e.g. failed logins, counted only when they fail, checked before each)."""
        now = self.clock()
        seconds, start = self._window(now, per)
        with self.engine.connect() as conn:
            count = conn.execute(sa.select(rate_limits.c.count).where(
                rate_limits.c.key == self.key_for(kind, value), rate_limits.c.window_start == start)).scalar()
        return Hit((count or 0) + 1, limit,
                   retry_after=max(1, seconds - (int(now.timestamp()) - int(start.timestamp()))))

    @staticmethod
    def _window(now: dt.datetime, per: dt.timedelta) -> tuple[int, dt.datetime]:
        """The window's length in seconds and its start: fixed windows, aligned on the epoch."""
        seconds = int(per.total_seconds())
        epoch = int(now.timestamp())
        return seconds, dt.datetime.fromtimestamp(epoch - epoch % seconds, dt.timezone.utc)
