"""The provider's rate limit, shared by every process that sends through it.

One row per provider in `send_limits` holds the earliest moment the next request may start, by
the database's clock (every worker reads the same clock, whatever its machine's says). Taking a
slot is one atomic upsert: the slot is `max(next_at, now)` and `next_at` moves one interval past
it, so however many processes ask at once, each gets its own slot, `1/rate` apart, and all of
them together never exceed `send_rate`. This is a token bucket holding one token (the "generic
cell rate algorithm"): it sends at the full rate from the first request, and never in bursts,
because a provider that counts requests per fixed second refuses the sixth of five sent at once
followed by one every fifth of a second.

When the provider says to wait (a 429's `retry-after`, or `ratelimit-remaining: 0` with its
`ratelimit-reset`), `defer` moves `next_at` for everyone, counted from the moment that request
started (the sender adds the moment it takes to reach the provider), not from when its answer
arrived: waiting the reset on top of the request's own time (uploading a batch, the provider
working through it, the answer) would lose that time on every window.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from .store import send_limits

INSERTS = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}


def db_now(dialect: str):
    """The database's clock, in seconds since the epoch, the same for the whole statement."""
    if dialect == "postgresql":
        return sa.cast(sa.func.extract("epoch", sa.func.statement_timestamp()), sa.Float)
    return (sa.func.julianday("now") - 2440587.5) * 86400.0  # SQLite: 'now' is fixed per statement


def _greatest(dialect: str, *values):
    return sa.func.greatest(*values) if dialect == "postgresql" else sa.func.max(*values)


class Pace:
    """At most `rate` requests per second through provider `name`, counted in the database."""

    def __init__(self, engine: Engine, name: str, rate: float, *,
                 sleep: Callable[[float], None] = time.sleep):
        self.engine, self.name, self.rate = engine, name, rate
        self.interval = 1.0 / rate
        self.sleep = sleep
        dialect = engine.dialect.name
        insert = INSERTS.get(dialect)
        if insert is None:
            raise ValueError(f"the shared rate limit needs SQLite or PostgreSQL, not {dialect}")
        now = db_now(dialect)
        interval = sa.bindparam("interval", type_=sa.Float)
        statement = insert(send_limits).values(name=sa.bindparam("limit_name"), next_at=now + interval)
        self._take = statement.on_conflict_do_update(
            index_elements=[send_limits.c.name],
            set_={"next_at": _greatest(dialect, send_limits.c.next_at, now) + interval},
        ).returning(send_limits.c.next_at - interval, now)
        self._defer = sa.update(send_limits).where(send_limits.c.name == sa.bindparam("limit_name")).values(
            next_at=_greatest(dialect, send_limits.c.next_at, sa.bindparam("until", type_=sa.Float)))

    def take(self, stop: threading.Event | None = None) -> float:
        """Wait for this process's slot (or until `stop` is set); the slot, by the database's clock."""
        with self.engine.begin() as conn:
            slot, now = conn.execute(self._take, {"limit_name": self.name, "interval": self.interval}).one()
        delay = slot - now
        if delay > 0:
            if stop is not None:
                stop.wait(delay)
            else:
                self.sleep(delay)
        return slot

    def defer(self, started: float, seconds: float) -> None:
        """No request before `seconds` after `started` (a slot `take` returned), for everyone."""
        with self.engine.begin() as conn:
            conn.execute(self._defer, {"limit_name": self.name, "until": started + seconds})
