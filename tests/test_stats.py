"""`newsletter stats`: every figure of an issue counted from real sends (the CLI through the fake
Resend API, or the outbox) and the provider's reports stored by `Reports.record`, on SQLite and
PostgreSQL."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
import uuid

import pytest
import sqlalchemy as sa

from newsletter.reports import Report, Reports
from newsletter.stats import Stats
from newsletter.store import deliveries, events, readers, send_runs
from newsletter.subscribers import Consent, ConsentMethod, Status, Subscribers, log_event

from .conftest import EXAMPLE
from .test_web_archive import digest_text

ISSUE = EXAMPLE.stem
BASE = "https://newsletter.example.com"  # base_url in the repository's newsletter.toml
SOURCE = "https://arxiv.org/abs/2604.11873"  # the example's first footnote's source
ARTICLE = "https://example.org/article"
CATEGORIES = {"r1": ("ai-tech",), "r2": ("essays",), "r3": ("ai-tech",)}  # the rest: every story


def add(db_url, settings, names) -> None:
    subs = Subscribers.open(db_url, settings.categories)
    for name in names:
        subs.add(f"{name}@example.com", categories=CATEGORIES.get(name, ()), consent=Consent(ConsentMethod.CLI))
    subs.close()


def message_ids(engine, issue: str = ISSUE) -> dict[str, str]:
    """The provider's message id of each reader's copy of `issue`, by the reader's name."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(readers.c.email, deliveries.c.message_id)
                            .join(deliveries, deliveries.c.reader_id == readers.c.id)
                            .join(send_runs, send_runs.c.id == deliveries.c.run_id)
                            .where(send_runs.c.issue == issue, deliveries.c.message_id.is_not(None))).all()
    return {email.split("@")[0]: message_id for email, message_id in rows}


def report(engine, kind: str, message_id: str, **more) -> None:
    assert Reports(engine).record(Report("resend", uuid.uuid4().hex, kind, message_id, **more)).stored


def token(engine, name: str) -> str:
    with engine.connect() as conn:
        return conn.execute(sa.select(readers.c.token).where(readers.c.email == f"{name}@example.com")).scalar()


def record_reports(engine) -> None:
    """What the provider says after the send: see the figures `test_every_figure_of_an_issue` expects."""
    ids = message_ids(engine)
    for name in ("r0", "r1", "r2", "r3", "r8"):
        report(engine, "delivered", ids[name])
    report(engine, "delivered", ids["r0"])  # a second report of the same: still one delivery
    report(engine, "delayed", ids["r4"])
    report(engine, "delayed", ids["r4"])
    report(engine, "bounced", ids["r4"], bounce_type="transient", detail="mailbox full")
    report(engine, "bounced", ids["r5"], bounce_type="undetermined")
    report(engine, "bounced", ids["r5"], bounce_type="permanent", detail="no such user")  # hard, not soft
    report(engine, "complained", ids["r3"])
    report(engine, "failed", ids["r7"], detail="suppressed by the provider")
    for _ in range(3):
        report(engine, "opened", ids["r0"])
    report(engine, "opened", ids["r1"])
    report(engine, "clicked", ids["r0"], link=ARTICLE)
    report(engine, "clicked", ids["r0"], link=ARTICLE)
    report(engine, "clicked", ids["r0"], link=SOURCE)
    report(engine, "clicked", ids["r1"], link=ARTICLE)
    report(engine, "clicked", ids["r2"], link=f"{BASE}/u/{token(engine, 'r2')}")
    report(engine, "clicked", ids["r3"], link=f"{BASE}/issues/{ISSUE}?v=AbCdEf")


@pytest.fixture
def sent(run, monkeypatch, db_url, session_settings, tmp_path, fake_resend):
    """The example issue sent through the fake Resend API to nine readers, one of whom it
    refuses, then the provider's reports about the eight it accepted."""
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", db_url)
    monkeypatch.setenv("NEWSLETTER_PROVIDER", "resend")
    fake_resend.state.switches.reject = {"r6@example.com"}
    add(db_url, session_settings, [f"r{i}" for i in range(9)])
    result = run("send", EXAMPLE, "--yes")
    assert result.code == 0, result.err
    assert "run 1: sent 8, failed 1, skipped 0" in result.out
    subs = Subscribers.open(db_url, session_settings.categories)
    record_reports(subs.engine)
    subs.unsubscribe("r2@example.com", reason="the link in the email")  # sent the issue: counts
    subs.unsubscribe("r6@example.com", reason="the link in an older email")  # never sent it: does not
    subs.add("late@example.com", consent=Consent(ConsentMethod.CLI))
    subs.unsubscribe("late@example.com", reason="changed their mind")  # not a reader of it: does not
    yield subs
    subs.close()


EXPECTED = {"sent": 8, "delivered": 5, "delayed": 1, "bounced": 2, "bounced_hard": 1, "bounced_soft": 1,
            "complained": 1, "failed": 2, "opened": 2, "clicked": 4, "unsubscribed": 1,
            "delivered_rate": 5 / 8, "open_rate": 2 / 5, "click_rate": 4 / 5, "bounce_rate": 2 / 8,
            "complaint_rate": 1 / 8}


def test_every_figure_of_an_issue(sent):
    stats = Stats(sent.engine, base_url=BASE)
    figures = stats.issue(ISSUE)
    assert figures.runs == (1,)
    for name, value in EXPECTED.items():
        got = figures.rate(name) if name.endswith("_rate") else getattr(figures, name)
        assert got == pytest.approx(value), name
    assert stats.run(1) == figures  # one run: the same figures
    assert [f.issue for f in stats.issues()] == [ISSUE]


def test_top_links_count_readers_not_clicks_and_group_each_readers_own_links(sent):
    links = Stats(sent.engine, base_url=BASE).top_links(ISSUE)
    assert [(link.link, link.clicks) for link in links] == [
        (ARTICLE, 2),  # r0 twice and r1: two readers
        (SOURCE, 1),  # a footnote's source, like any link
        (f"{BASE}/issues/{ISSUE}?v=*", 1),
        (f"{BASE}/u/*", 1),  # r2's own unsubscribe link: its token is not shown
    ]
    assert links[3].label == "unsubscribe links, each reader's own"
    assert token(sent.engine, "r2") not in repr(links)


def test_stats_as_a_table_csv_and_json(sent, run):
    table = run("stats")
    assert table.code == 0, table.err
    header, line = table.out.splitlines()[:2]
    assert header.split()[:3] == ["issue", "started", "sent"] and "opens (approximate)" in header
    assert header.index("clicks") < header.index("opens (approximate)"), "clicks first: the rate to trust"
    assert line.split()[0] == ISSUE and line.split()[2:8] == ["8", "62.5%", "80.0%", "40.0%", "25.0%", "12.5%"]
    assert line.split()[-1] == "1"

    rows = list(csv.DictReader(io.StringIO(run("stats", "--format", "csv").out)))
    assert len(rows) == 1 and rows[0]["issue"] == ISSUE and rows[0]["runs"] == "1"
    assert {k: rows[0][k] for k in ("sent", "delivered", "bounced_hard", "opened", "clicked")} == \
        {"sent": "8", "delivered": "5", "bounced_hard": "1", "opened": "2", "clicked": "4"}
    assert float(rows[0]["click_rate"]) == 0.8

    listed = json.loads(run("stats", "--format", "json").out)
    assert [item["issue"] for item in listed] == [ISSUE]
    one = json.loads(run("stats", f"digests/{ISSUE}.md", "--format", "json").out)  # a path works too
    assert {k: one[k] for k in EXPECTED} == pytest.approx(EXPECTED)
    assert one["top_links"][0] == {"link": ARTICLE, "clicks": 2, "label": None}
    assert json.loads(run("stats", "1", "--format", "json").out)["run"] == 1


def cells(out: str, label: str) -> list[str]:
    """The cells after `label` in its row of an aligned table (cells are 2+ spaces apart)."""
    line = next(line.strip() for line in out.splitlines() if line.strip().startswith(label + "  "))
    return re.split(r"\s{2,}", line[len(label):].strip())


def test_one_issue_as_a_table(sent, run):
    result = run("stats", ISSUE)
    assert result.code == 0, result.err
    assert cells(result.out, "delivered") == ["5", "62.5%", "of sent"]
    assert cells(result.out, "clicks") == ["4", "80.0%", "of delivered"]
    assert cells(result.out, "opens (approximate)") == ["2", "40.0%", "of delivered"]
    assert cells(result.out, "hard bounces") == ["1"] and cells(result.out, "soft bounces") == ["1"]
    assert cells(result.out, "unsubscribes") == ["1"] and cells(result.out, "failed") == ["2"]
    assert f"      2  {ARTICLE}" in result.out and f"{BASE}/u/*  (unsubscribe links" in result.out


def test_what_is_not_tracked_says_so(sent, run, monkeypatch):
    monkeypatch.setenv("NEWSLETTER_TRACK_OPENS", "false")
    table = run("stats", ISSUE)
    assert cells(table.out, "opens (approximate)") == ["not tracked", "not tracked"]
    assert cells(table.out, "clicks") == ["4", "80.0%", "of delivered"]
    row = next(csv.DictReader(io.StringIO(run("stats", "--format", "csv").out)))
    assert row["opened"] == row["open_rate"] == "not tracked" and row["clicked"] == "4"
    assert json.loads(run("stats", ISSUE, "--format", "json").out)["opened"] is None
    monkeypatch.setenv("NEWSLETTER_TRACK_CLICKS", "false")
    table = run("stats", ISSUE)
    assert "top links: clicks are not tracked" in table.out and ARTICLE not in table.out
    assert "not tracked" in run("stats").out.splitlines()[1]


@pytest.mark.parametrize("target, message", [
    ("no-such-issue", "error: no issue no-such-issue was sent (see `newsletter stats`)"),
    ("digests/no-such-issue.md", "error: no issue no-such-issue.md was sent (see `newsletter stats`)"),
    ("42", "error: there is no send run 42 (see `newsletter runs`)"),
])
def test_an_unknown_issue_or_run_is_one_line(sent, run, target, message):
    result = run("stats", target)
    assert result.code == 1 and result.out == "" and result.err == message + "\n"


# -- unsubscribes: the attribution window ---------------------------------------------------------

T0 = dt.datetime(2026, 3, 2, 8, 0, tzinfo=dt.timezone.utc)


@pytest.fixture
def three_issues(run, monkeypatch, db_url, session_settings, tmp_path):
    """Issues a, b and c sent (through the outbox) to the same readers u1..u7, then dated: a at
    T0, b three days later, c twenty days after a."""
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", db_url)
    monkeypatch.setenv("NEWSLETTER_OUTBOX_DIR", str(tmp_path / "outbox"))
    add(db_url, session_settings, [f"u{i}" for i in range(1, 8)])
    for name in ("a", "b", "c"):
        path = tmp_path / f"{name}.md"
        path.write_text(digest_text(f"Issue {name}"), encoding="utf-8")
        assert run("send", path, "--yes").code == 0
    subs = Subscribers.open(db_url, session_settings.categories)
    with subs.engine.begin() as conn:
        for name, days in (("a", 0), ("b", 3), ("c", 20)):
            conn.execute(sa.update(send_runs).where(send_runs.c.issue == name)
                         .values(created_at=T0 + dt.timedelta(days=days)))
    yield subs
    subs.close()


def unsubscribe_at(subs, name: str, at: dt.datetime) -> None:
    subs.unsubscribe(f"{name}@example.com", reason="test")
    with subs.engine.begin() as conn:
        newest = conn.execute(sa.select(sa.func.max(events.c.id))).scalar()
        conn.execute(sa.update(events).where(events.c.id == newest).values(at=at))


def test_unsubscribes_count_within_seven_days_and_before_the_next_issue(three_issues):
    subs, day, minute = three_issues, dt.timedelta(days=1), dt.timedelta(minutes=1)
    unsubscribe_at(subs, "u1", T0 + day)  # a
    unsubscribe_at(subs, "u2", T0 + 3 * day - minute)  # a: just before b started
    unsubscribe_at(subs, "u3", T0 + 3 * day + minute)  # b
    unsubscribe_at(subs, "u4", T0 + 10 * day - minute)  # b: the last minute of its seven days
    unsubscribe_at(subs, "u5", T0 + 10 * day + minute)  # nobody's: b's seven days are over, c not sent
    unsubscribe_at(subs, "u6", T0 - minute)  # nobody's: before a
    unsubscribe_at(subs, "u7", T0 + 20 * day + minute)  # c
    with subs.engine.begin() as conn:  # u1 again (came back and left again): one reader, counted once
        reader = conn.execute(sa.select(readers.c.id).where(readers.c.email == "u1@example.com")).scalar()
        log_event(conn, reader, "status", old="active", new="unsubscribed", reason="again")
        conn.execute(sa.update(events).where(events.c.id == sa.select(sa.func.max(events.c.id)).scalar_subquery())
                     .values(at=T0 + 2 * day))
    stats = Stats(subs.engine)
    assert {f.issue: f.unsubscribed for f in stats.issues()} == {"a": 2, "b": 2, "c": 1}
    assert [f.issue for f in stats.issues()] == ["c", "b", "a"], "newest first"
    assert stats.run(2).unsubscribed == 2  # b's only run alone


def test_the_summary_takes_the_same_few_queries_however_many_issues(three_issues):
    statements = []
    sa.event.listen(three_issues.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    Stats(three_issues.engine).issues()
    assert len(statements) <= 5, statements
    statements.clear()
    Stats(three_issues.engine).issue("b")
    assert len(statements) <= 6, statements


# -- readers week by week -------------------------------------------------------------------------

def test_readers_by_week_are_rebuilt_from_the_events(db_url, session_settings):
    subs = Subscribers.open(db_url, session_settings.categories)
    monday = dt.datetime(2026, 3, 2, 12, tzinfo=dt.timezone.utc)  # ISO week 2026-W10
    week = dt.timedelta(days=7)
    added = {"a": (("ai-tech",), Status.ACTIVE, monday), "b": (("essays",), Status.ACTIVE, monday + dt.timedelta(days=6)),
             "c": ((), Status.ACTIVE, monday), "d": (("ai-tech",), Status.PENDING, monday + week)}
    for name, (categories, status, at) in added.items():
        reader = subs.add(f"{name}@example.com", categories=categories, status=status,
                          consent=Consent(ConsentMethod.CLI))
        with subs.engine.begin() as conn:
            conn.execute(sa.update(readers).where(readers.c.id == reader.id).values(created_at=at))
    changes = [("d", Status.ACTIVE, monday + 2 * week), ("a", Status.UNSUBSCRIBED, monday + 2 * week),
               ("b", Status.BOUNCED, monday + 3 * week + dt.timedelta(days=6, hours=11))]
    for name, status, at in changes:
        subs.change_status(f"{name}@example.com", status, reason="test")
        with subs.engine.begin() as conn:
            newest = conn.execute(sa.select(sa.func.max(events.c.id))).scalar()
            conn.execute(sa.update(events).where(events.c.id == newest).values(at=at))
    weeks = Stats(subs.engine).readers_by_week(("ai-tech", "ai-research", "essays"),
                                               today=dt.date(2026, 4, 1))
    assert [w.week for w in weeks] == ["2026-W10", "2026-W11", "2026-W12", "2026-W13", "2026-W14"]
    assert weeks[0].starts == dt.date(2026, 3, 2)
    shown = [(w.statuses["pending"], w.statuses["active"], w.statuses["unsubscribed"], w.statuses["bounced"])
             for w in weeks]
    assert shown == [(0, 3, 0, 0), (1, 3, 0, 0), (0, 3, 1, 0), (0, 2, 1, 1), (0, 2, 1, 1)]
    by_category = [(w.active["ai-tech"], w.active["essays"], w.active[""], w.active["ai-research"]) for w in weeks]
    assert by_category == [(1, 1, 1, 0), (1, 1, 1, 0), (1, 1, 1, 0), (1, 0, 1, 0), (1, 0, 1, 0)]
    by_status, per_category = subs.counts()
    assert {s: n for s, n in weeks[-1].statuses.items() if n} == {s: n for s, n in by_status.items() if n}, \
        "the last week is the list as it is now"
    assert weeks[-1].active["ai-tech"] == per_category["ai-tech"]
    subs.close()


def test_readers_by_week_through_the_cli(run, monkeypatch, db_url, session_settings):
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", db_url)
    add(db_url, session_settings, ["r0", "r1", "r2"])
    rows = list(csv.DictReader(io.StringIO(run("stats", "--readers", "--format", "csv").out)))
    assert len(rows) == 1 and rows[0]["active"] == "3" and rows[0]["active_ai-tech"] == "1"
    assert rows[0]["active_essays"] == "1" and rows[0]["active_every_story"] == "1"
    listed = json.loads(run("stats", "--readers", "--format", "json").out)
    assert listed[0]["statuses"]["active"] == 3 and listed[0]["active_by_category"]["ai-tech"] == 1
    table = run("stats", "--readers").out
    assert "AI Tech" in table and "every story" in table
    both = run("stats", "--readers", "1")
    assert both.code == 2 and both.err.count("\n") == 1 and "--readers" in both.err


def test_no_issue_yet(run, monkeypatch, db_url, session_settings):
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", db_url)
    add(db_url, session_settings, ["r0"])
    assert run("stats").out == "no issue has been sent yet\n"
    assert json.loads(run("stats", "--format", "json").out) == []
    assert run("stats", "--format", "csv").out.startswith("issue,subject,runs,started_at,sent,")


@pytest.mark.filterwarnings("ignore::getpass.GetPassWarning")  # no terminal under pytest
def test_admin_password_prints_a_hash_of_the_password_typed_twice(run, monkeypatch):
    from werkzeug.security import check_password_hash

    monkeypatch.setattr("sys.stdin", io.StringIO("a long secret\na long secret\n"))
    result = run("admin-password")
    assert result.code == 0, result.err
    hashed = result.out.strip().splitlines()[-1]
    assert check_password_hash(hashed, "a long secret") and "a long secret" not in result.out
    assert "NEWSLETTER_ADMIN_PASSWORD_HASH" in result.err
    monkeypatch.setattr("sys.stdin", io.StringIO("short\nshort\n"))
    assert run("admin-password").code == 1


def test_reports_about_emails_no_issue_sent_are_counted(sent, run, db_url, session_settings):
    from newsletter.reports import Report, Reports

    assert "no issue sent" not in run("stats").out
    subs = Subscribers.open(db_url, session_settings.categories)
    reports_ = Reports(subs.engine)
    for n, kind in enumerate(["delivered", "delivered", "bounced"]):
        reports_.record(Report("resend", f"msg_other_{n}", kind, f"re_someone_elses_{n}"))
    subs.close()
    table = run("stats")
    assert table.code == 0
    assert table.out.splitlines()[-1] == "and 3 reports about emails no issue sent: bounced 1, delivered 2"
    assert run("stats", "--format", "json").out.lstrip().startswith("[")  # the list of issues alone
