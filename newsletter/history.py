"""Readers over time, week by week, rebuilt from what the database keeps.

The database holds each reader's current status and categories, when they were added
(`readers.created_at`), and an event for every status change since (`events`, kind `status`,
detail `{"old": ..., "new": ...}`). The count of readers per status at the end of each ISO week
(Monday to Sunday, UTC) is rebuilt from those in four aggregate queries, whatever the size of
the list:

- a reader counts from the week they were added, with the status they started with: the `old`
  of their first status event, or, with no such event, their status now;
- each status event moves one reader from `old` to `new` in the week it happened;
- the weekly changes are summed from the first week to this one (so the last week is the
  readers as they are now, per status).

Active readers per category are counted the same way, with each reader's categories as they
are now; readers who chose no category (they get every story) are counted under "".

Limits, worth knowing before reading much into an old week:

- categories are today's: a reader who switched topics counts under the new ones for every
  week, also before the switch (the category events are not replayed);
- a forgotten reader (`subscribers forget`, erased at their request) is gone from every week,
  as are pending signups that were pruned unconfirmed: their rows and events are deleted;
- readers imported with a status count with it from the week of the import; what happened to
  them before, elsewhere, is unknown;
- times are when the change was recorded (a bounce: when its report arrived).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Engine

from .errors import StoreError
from .store import events, reader_categories, readers
from .subscribers import Status

STATUSES = tuple(s.value for s in Status)
EVERY_STORY = ""  # the category key of readers who chose none


@dataclass(frozen=True)
class ReaderWeek:
    starts: dt.date  # the Monday of the ISO week
    statuses: dict[str, int]  # readers per status at the end of the week (every status present)
    active: dict[str, int]  # active readers per category slug then; EVERY_STORY: those with none

    @property
    def week(self) -> str:
        year, week, _ = self.starts.isocalendar()
        return f"{year}-W{week:02d}"

    @property
    def readers(self) -> int:
        return sum(self.statuses.values())


def json_text(dialect: str, column, key: str):
    """The text value at `key` of a JSON object stored as text in `column`."""
    if dialect == "sqlite":
        return sa.func.json_extract(column, f"$.{key}")
    if dialect == "postgresql":
        return sa.cast(column, postgresql.JSONB)[key].astext
    raise StoreError(f"stats need SQLite or PostgreSQL, not {dialect}")


def week_of(dialect: str, column):
    """The Monday (UTC) of the ISO week of timestamp `column`, as a date (SQLite: its text)."""
    if dialect == "sqlite":  # stored as UTC text; 'weekday 0' moves to the Sunday that ends the week
        return sa.func.date(column, "weekday 0", "-6 days")
    return sa.cast(sa.func.date_trunc("week", sa.func.timezone("UTC", column)), sa.Date)


def readers_by_week(engine: Engine, categories: tuple[str, ...] = (), *,
                    today: dt.date | None = None) -> list[ReaderWeek]:
    """Readers per status and active readers per category at the end of each week, from the
    week the first reader was added to this one; `categories` (slugs) are always present."""
    dialect = engine.dialect.name
    changes: dict[dt.date, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    active: dict[dt.date, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    with engine.connect() as conn:
        for week, status, n in conn.execute(_added(dialect, by_category=False)):
            changes[_day(week)][status] += n
        for week, old, new, n in conn.execute(_moves(dialect)):
            changes[_day(week)][old] -= n
            changes[_day(week)][new] += n
        for week, category, n in conn.execute(_added(dialect, by_category=True)):
            active[_day(week)][category or EVERY_STORY] += n
        for week, category, n in conn.execute(_active_moves(dialect)):
            active[_day(week)][category or EVERY_STORY] += n
    if not changes:
        return []
    first = min(changes)
    last = _monday(today or dt.datetime.now(dt.timezone.utc).date())
    keys = list(dict.fromkeys([*categories, *sorted(k for w in active.values() for k in w), EVERY_STORY]))
    statuses = dict.fromkeys(STATUSES, 0) | {k: 0 for w in changes.values() for k in w}
    by_category = dict.fromkeys(keys, 0)
    weeks = []
    day = first
    while day <= max(last, max(changes)):  # weeks, not readers: a few hundred at most
        for status, n in changes.get(day, {}).items():
            statuses[status] += n
        for category, n in active.get(day, {}).items():
            by_category[category] += n
        weeks.append(ReaderWeek(day, dict(statuses), dict(by_category)))
        day += dt.timedelta(days=7)
    return weeks


def _first_status(dialect: str):
    """Each reader's status when added: the `old` of their first status event, else today's."""
    first = (sa.select(json_text(dialect, events.c.detail, "old"))
             .where(events.c.reader_id == readers.c.id, events.c.kind == "status")
             .order_by(events.c.at, events.c.id).limit(1).scalar_subquery())
    return sa.func.coalesce(first, readers.c.status)


def _added(dialect: str, *, by_category: bool):
    """(week, status, readers) added that week; by category: (week, category, active readers)."""
    columns = [week_of(dialect, readers.c.created_at).label("week"), _first_status(dialect).label("status")]
    source = readers
    if by_category:
        columns.append(reader_categories.c.category.label("category"))
        source = readers.outerjoin(reader_categories, reader_categories.c.reader_id == readers.c.id)
    added = sa.select(*columns).select_from(source).subquery()
    if not by_category:
        return sa.select(added.c.week, added.c.status, sa.func.count()).group_by(added.c.week, added.c.status)
    return (sa.select(added.c.week, added.c.category, sa.func.count()).where(added.c.status == "active")
            .group_by(added.c.week, added.c.category))


def _status_events(dialect: str, *columns, source=events):
    return (sa.select(week_of(dialect, events.c.at).label("week"),
                      json_text(dialect, events.c.detail, "old").label("old"),
                      json_text(dialect, events.c.detail, "new").label("new"), *columns)
            .select_from(source).where(events.c.kind == "status", events.c.reader_id.is_not(None)))


def _moves(dialect: str):
    """(week, old, new, readers) of the status changes."""
    moves = _status_events(dialect).subquery()
    return (sa.select(moves.c.week, moves.c.old, moves.c.new, sa.func.count())
            .group_by(moves.c.week, moves.c.old, moves.c.new))


def _active_moves(dialect: str):
    """(week, category, change in active readers) from the status changes to and from active."""
    joined = events.outerjoin(reader_categories, reader_categories.c.reader_id == events.c.reader_id)
    moves = _status_events(dialect, reader_categories.c.category.label("category"), source=joined).subquery()
    change = sa.case((moves.c.new == "active", 1), (moves.c.old == "active", -1), else_=0)
    return (sa.select(moves.c.week, moves.c.category, sa.func.sum(change))
            .group_by(moves.c.week, moves.c.category))


def _day(value) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    return value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value))


def _monday(day: dt.date) -> dt.date:
    return day - dt.timedelta(days=day.weekday())
