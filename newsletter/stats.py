"""What each issue did once sent, counted in the database: the figures behind `newsletter stats`
and the web app's /stats pages. Queries only; nothing here prints.

An issue is every run of one digest (`send_runs.issue`, the file's name); one run can be looked
at alone too. Each figure is one SQL aggregate over all the issue's deliveries or reports (a few
queries for the whole list of issues), never a loop over readers:

    sent          deliveries in state `sent` (the provider accepted the email)
    failed        deliveries in state `failed` (refused at send time), plus deliveries the
                  provider reported `failed` afterwards
    delivered, delayed, complained
                  deliveries with at least one report of that kind
    bounced       deliveries with a bounce report: `hard` if one of them is permanent, else
                  `soft` (transient or undetermined)
    opened        deliveries with an `opened` report (unique opens). Approximate: Apple Mail
                  Privacy Protection fetches every image of every email, opened or not, and
                  clients that block images never report an open. Clicks are the figure to trust.
    clicked       deliveries with a `clicked` report (unique clicks)
    unsubscribed  see `UNSUBSCRIBE_WINDOW`

Reports that match no delivery (a mailbox report naming only an address) count for no issue.
Rates are fractions, None when there is nothing to divide by: delivered / sent, opened /
delivered, clicked / delivered, bounced / sent, complained / sent.

Readers over time (`readers_by_week`) are rebuilt from the reader events: see `history.py`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from .errors import IssueNotFound, RunNotFound
from .history import ReaderWeek, json_text, readers_by_week
from .links import Links
from .store import UTCDateTime, deliveries, events, reports, send_runs

# An unsubscribe is attributed to an issue when the reader's status became `unsubscribed`
# (any way: the link in the email, the one-click header, the preferences page, the CLI, an
# import) within this long after the issue's first run started, and before the first run of
# the next issue started, and the reader was sent the issue (a delivery in state `sent` in one
# of its runs). Each reader counts once per issue. For one run alone: the same, from that run's
# start, for the readers that run sent to.
UNSUBSCRIBE_WINDOW = dt.timedelta(days=7)
TOP_LINKS = 10

RATES = {  # name: (numerator, denominator)
    "delivered_rate": ("delivered", "sent"),
    "open_rate": ("opened", "delivered"),
    "click_rate": ("clicked", "delivered"),
    "bounce_rate": ("bounced", "sent"),
    "complaint_rate": ("complained", "sent"),
}
LABELS = {  # what the CLI and the pages call each figure
    "sent": "sent", "delivered": "delivered", "delayed": "delayed", "bounced": "bounces",
    "bounced_hard": "hard bounces", "bounced_soft": "soft bounces", "complained": "complaints",
    "failed": "failed", "opened": "opens (approximate)", "clicked": "clicks",
    "unsubscribed": "unsubscribes", "delivered_rate": "delivered", "open_rate": "opens (approximate)",
    "click_rate": "clicks", "bounce_rate": "bounces", "complaint_rate": "complaints",
}
COUNTS = ("sent", "delivered", "delayed", "bounced", "bounced_hard", "bounced_soft", "complained",
          "failed", "opened", "clicked", "unsubscribed")
NOT_TRACKED = {"opened": ("opened", "open_rate"), "clicked": ("clicked", "click_rate")}

__all__ = ["Figures", "LinkClicks", "ReaderWeek", "Stats", "figures_record", "readers_by_week"]


@dataclass(frozen=True)
class Figures:
    """What one issue (all its runs), or one run, did."""

    issue: str
    subject: str
    runs: tuple[int, ...]
    started_at: dt.datetime  # when its first run started
    sent: int = 0
    failed: int = 0
    delivered: int = 0
    delayed: int = 0
    bounced_hard: int = 0
    bounced_soft: int = 0
    complained: int = 0
    opened: int = 0
    clicked: int = 0
    unsubscribed: int = 0

    @property
    def bounced(self) -> int:
        return self.bounced_hard + self.bounced_soft

    def rate(self, name: str) -> float | None:
        numerator, denominator = RATES[name]
        below = getattr(self, denominator)
        return getattr(self, numerator) / below if below else None


@dataclass(frozen=True)
class LinkClicks:
    link: str  # as clicked; each reader's own links (unsubscribe, preferences) as one, ending in `*`
    clicks: int  # deliveries that clicked it at least once
    label: str | None = None  # for a link that stands for many: what they are


def figures_record(figures: Figures, *, opens: bool = True, clicks: bool = True) -> dict:
    """The figures as one flat record (counts, then rates as fractions), for CSV, JSON and pages.
    What is not tracked (`opens`, `clicks` false) is None: not a zero nobody measured."""
    record = {"issue": figures.issue, "subject": figures.subject, "runs": list(figures.runs),
              "started_at": figures.started_at.isoformat(timespec="seconds")}
    record |= {name: getattr(figures, name) for name in COUNTS}
    record |= {name: figures.rate(name) for name in RATES}
    for tracked, (count, rate) in ((opens, NOT_TRACKED["opened"]), (clicks, NOT_TRACKED["clicked"])):
        if not tracked:
            record[count] = record[rate] = None
    return record


class Stats:
    """The figures of every issue, from the ledger (`deliveries`) and the provider's `reports`."""

    def __init__(self, engine: Engine, *, base_url: str = "", window: dt.timedelta = UNSUBSCRIBE_WINDOW):
        self.engine = engine
        self.links = Links(base_url)
        self.window = window

    def issues(self) -> list[Figures]:
        """Every issue that has a run, newest first (by its first run's start)."""
        with self.engine.connect() as conn:
            starts = self._starts(conn)
            found = self._figures(conn, send_runs.c.issue, sa.true(), starts)
        return sorted(found.values(), key=lambda f: (f.started_at, f.issue), reverse=True)

    def issue(self, issue: str) -> Figures:
        """One issue, all its runs together. IssueNotFound if it has none."""
        with self.engine.connect() as conn:
            starts = self._starts(conn)
            if issue not in starts:
                raise IssueNotFound(f"no issue {issue} was sent (see `newsletter stats`)", issue=issue)
            return self._figures(conn, send_runs.c.issue, send_runs.c.issue == issue, starts)[issue]

    def run(self, run_id: int) -> Figures:
        """One run alone. RunNotFound if there is none with that id."""
        with self.engine.connect() as conn:
            found = self._figures(conn, send_runs.c.id, send_runs.c.id == run_id, self._starts(conn))
        if run_id not in found:
            raise RunNotFound(f"there is no send run {run_id} (see `newsletter runs`)", run_id=run_id)
        return found[run_id]

    def top_links(self, issue: str | None = None, *, run_id: int | None = None,
                  limit: int = TOP_LINKS) -> list[LinkClicks]:
        """The most clicked links of an issue (or of one run), by unique clicks; links to a
        footnote's source count like any other."""
        scope = send_runs.c.issue == issue if run_id is None else send_runs.c.id == run_id
        with self.engine.connect() as conn:
            slug = issue or conn.execute(sa.select(send_runs.c.issue).where(send_runs.c.id == run_id)).scalar()
            link = self._grouped_link(slug or "")
            clicks = sa.func.count(sa.distinct(reports.c.delivery_id))
            rows = conn.execute(
                sa.select(link.label("link"), clicks.label("clicks"))
                .select_from(reports.join(send_runs, send_runs.c.id == reports.c.run_id))
                .where(scope, reports.c.kind == "clicked", reports.c.link.is_not(None))
                .group_by(link).order_by(clicks.desc(), link).limit(limit)).all()
        return [LinkClicks(row.link, row.clicks, self._link_label(row.link, slug or "")) for row in rows]

    def unmatched(self) -> dict[str, int]:
        """Reports about emails no run of ours sent and no reader of ours received (another
        program's mail through the same account, `newsletter webhooks test`), by kind."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(reports.c.kind, sa.func.count()).where(
                reports.c.delivery_id.is_(None), reports.c.reader_id.is_(None))
                .group_by(reports.c.kind).order_by(reports.c.kind)).all()
        return {kind: number for kind, number in rows}

    def readers_by_week(self, categories: tuple[str, ...] = (), *, today: dt.date | None = None) -> list[ReaderWeek]:
        return readers_by_week(self.engine, categories, today=today)

    # -- queries -------------------------------------------------------------------------------

    def _starts(self, conn: Connection) -> dict[str, dt.datetime]:
        """When each issue's first run started."""
        return dict(conn.execute(sa.select(send_runs.c.issue, sa.func.min(send_runs.c.created_at))
                                 .group_by(send_runs.c.issue)).all())

    def _figures(self, conn: Connection, key, scope, starts: dict[str, dt.datetime]) -> dict:
        """Figures per `key` (an issue's name, or a run's id) of the runs `scope` selects."""
        runs = conn.execute(sa.select(key, send_runs.c.id, send_runs.c.issue, send_runs.c.subject,
                                      send_runs.c.created_at).where(scope).order_by(send_runs.c.id)).all()
        if not runs:
            return {}
        found: dict = {}
        for row in runs:  # the runs, not their readers: a handful per issue
            entry = found.setdefault(row[0], {"issue": row.issue, "subject": row.subject, "runs": [],
                                              "started_at": row.created_at})  # the first run's subject
            entry["runs"].append(row.id)
            entry["started_at"] = min(entry["started_at"], row.created_at)
        counts = {k: {} for k in found}
        for query in (self._ledger_counts(key, scope), self._report_counts(key, scope)):
            for row in conn.execute(query).mappings():
                counts[row["key"]].update({name: value for name, value in row.items() if name != "key"})
        for k, n in self._unsubscribes(conn, key, found, starts).items():
            counts[k]["unsubscribed"] = n
        result = {}
        for k, figures in found.items():
            c = counts[k]
            result[k] = Figures(
                issue=figures["issue"], subject=figures["subject"], runs=tuple(figures["runs"]),
                started_at=figures["started_at"], sent=c.get("sent", 0),
                failed=c.get("failed", 0) + c.get("reported_failed", 0), delivered=c.get("delivered", 0),
                delayed=c.get("delayed", 0), bounced_hard=c.get("hard", 0),
                bounced_soft=c.get("any_bounce", 0) - c.get("hard", 0), complained=c.get("complained", 0),
                opened=c.get("opened", 0), clicked=c.get("clicked", 0), unsubscribed=c.get("unsubscribed", 0))
        return result

    @staticmethod
    def _ledger_counts(key, scope):
        state = deliveries.c.state
        return (sa.select(key.label("key"), sa.func.count().filter(state == "sent").label("sent"),
                          sa.func.count().filter(state == "failed").label("failed"))
                .select_from(deliveries.join(send_runs, send_runs.c.id == deliveries.c.run_id))
                .where(scope).group_by(key))

    @staticmethod
    def _report_counts(key, scope):
        """Deliveries with at least one report of each kind: one query, each a COUNT(DISTINCT)."""
        def having(condition):
            return sa.func.count(sa.distinct(sa.case((condition, reports.c.delivery_id))))
        kind = reports.c.kind
        return (sa.select(key.label("key"),
                          having(kind == "delivered").label("delivered"),
                          having(kind == "delayed").label("delayed"),
                          having(kind == "bounced").label("any_bounce"),
                          having(sa.and_(kind == "bounced", reports.c.bounce_type == "permanent")).label("hard"),
                          having(kind == "complained").label("complained"),
                          having(kind == "failed").label("reported_failed"),
                          having(kind == "opened").label("opened"),
                          having(kind == "clicked").label("clicked"))
                .select_from(reports.join(send_runs, send_runs.c.id == reports.c.run_id))
                .where(scope).group_by(key))

    def _unsubscribes(self, conn: Connection, key, found: dict, starts: dict[str, dt.datetime]) -> dict:
        """Readers unsubscribed within each issue's (or run's) window: one query for them all."""
        ordered = sorted(starts.values())
        kind = sa.Integer() if key is send_runs.c.id else sa.String()
        windows = []
        for k, figures in found.items():  # one row per issue (or run): the windows as a table
            begins = figures["started_at"] if key is send_runs.c.id else starts[figures["issue"]]
            ends = min([begins + self.window, *[s for s in ordered if s > begins][:1]])
            windows.append(sa.select(sa.literal(k, kind).label("key"),
                                     sa.literal(begins, UTCDateTime()).label("begins"),
                                     sa.literal(ends, UTCDateTime()).label("ends")))
        table = sa.union_all(*windows).cte("windows")
        sent_it = (sa.select(deliveries.c.id)
                   .join(send_runs, send_runs.c.id == deliveries.c.run_id)
                   .where(deliveries.c.reader_id == events.c.reader_id, deliveries.c.state == "sent",
                          key == table.c.key).exists())
        new_status = json_text(conn.dialect.name, events.c.detail, "new")
        rows = conn.execute(
            sa.select(table.c.key, sa.func.count(sa.distinct(events.c.reader_id)))
            .select_from(events.join(table, sa.and_(events.c.at >= table.c.begins, events.c.at < table.c.ends)))
            .where(events.c.kind == "status", events.c.reader_id.is_not(None), new_status == "unsubscribed",
                   sent_it)
            .group_by(table.c.key)).all()
        return dict(rows)

    def _grouped_link(self, slug: str):
        """The clicked link, with each reader's own links (unsubscribe, preferences: a secret
        token each) and the issue's "view in the browser" links (one per variant) as one each."""
        link = reports.c.link
        cases = [(link.startswith(prefix, autoescape=True), sa.literal(prefix + "*"))
                 for prefix in self._grouped_prefixes(slug)]
        return sa.case(*cases, else_=link) if cases else link

    def _grouped_prefixes(self, slug: str) -> dict[str, str]:
        prefixes = {self.links.unsubscribe(""): "unsubscribe links, each reader's own",
                    self.links.preferences(""): "preferences links, each reader's own"}
        if slug:
            prefixes[self.links.issue(slug) + "?v="] = "view in the browser, one link per variant"
        return {prefix: label for prefix, label in prefixes.items() if self.links.base}

    def _link_label(self, link: str, slug: str) -> str | None:
        prefixes = self._grouped_prefixes(slug)
        return prefixes.get(link[:-1]) if link.endswith("*") else None
