"""Many `newsletter worker` processes sharing runs on this machine's PostgreSQL, at the fake
Resend server: exactly once, a killed worker's batches finished by the others, one rate limit
for all of them, one pause for all of them."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
import sqlalchemy as sa

from newsletter.ledger import Ledger, RunStatus
from newsletter.store import insert_many, issues, reader_categories, readers, run_variants, send_batches, utcnow
from newsletter.subscribers import Subscribers, new_token

from .conftest import PG_URL, ROOT, TEST_KEY
from .test_variants import DIGEST

COMMAND = [sys.executable, "-m", "newsletter"]
CATEGORY_SETS = [(), ("ai-tech",), ("ai-research",), ("essays",), ("ai-tech", "essays")]


@pytest.fixture
def pg_url():
    """A schema of its own on the machine's PostgreSQL (workers need PostgreSQL)."""
    import uuid

    schema = f"w_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    with admin.begin() as conn:
        conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


def populate(url: str, settings, count: int) -> list[str]:
    subs = Subscribers.open(url, settings.categories)
    rng, now = random.Random(12), utcnow()
    emails = [f"w{i:05d}@example{i % 7}.com" for i in range(count)]
    with subs.engine.begin() as conn:
        insert_many(conn, readers, [{"email": e, "name": None, "status": "active", "token": new_token(),
                                     "created_at": now, "status_changed_at": now, "confirmed_at": now,
                                     "consent_at": now, "consent_method": "import", "consent_ip": None,
                                     "consent_source": "test"} for e in emails])
        ids = dict(conn.execute(sa.select(readers.c.email, readers.c.id)).all())
        insert_many(conn, reader_categories, [{"reader_id": ids[e], "category": c}
                                              for e in emails for c in rng.choice(CATEGORY_SETS)])
    subs.close()
    return emails


def environment(url: str, fake, **more: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    return env | {"NEWSLETTER_CONFIG": str(ROOT / "newsletter.toml"), "NEWSLETTER_DATABASE_URL": url,
                  "NEWSLETTER_SECRET_KEY": TEST_KEY, "NEWSLETTER_PROVIDER": "resend",
                  "RESEND_API_KEY": fake.state.api_key, "RESEND_API_URL": fake.url} | more


def start_run(env: dict, digest) -> str:
    """`newsletter send --workers 0`: the run is created and left to the workers."""
    result = subprocess.run([*COMMAND, "send", str(digest), "--yes", "--workers", "0"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "left to `newsletter worker` processes" in result.stdout
    return result.stdout


def workers(env: dict, n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([*COMMAND, "worker", "--exit-when-idle"], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True) for _ in range(n)]


def wait_all(processes: list[subprocess.Popen], seconds: float) -> list[str]:
    deadline = time.monotonic() + seconds
    logs = []
    for process in processes:
        try:
            _, err = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for p in processes:
                p.kill()
            pytest.fail(f"a worker did not exit within {seconds:.0f} s")
        logs.append(err)
    return logs


def wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {seconds:.0f} s")
        time.sleep(0.05)  # the database and the fake server have no event to wait on


def held_by(engine, pid: int) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(send_batches).where(
            send_batches.c.owner.like(f"%:{pid}"))).scalar()


def test_four_workers_share_a_run_and_finish_the_batches_of_one_killed_mid_batch(
        pg_url, fake_resend, session_settings, write_digest):
    rate = 12.0  # below what four workers reach at this latency (about 25 requests/s): the limit binds
    emails = populate(pg_url, session_settings, 20_000)
    fake_resend.switches.delay = 0.15  # each request takes a while: a worker is killed mid-request
    env = environment(pg_url, fake_resend, NEWSLETTER_SEND_RATE=str(rate), NEWSLETTER_BATCH_LEASE="3",
                      NEWSLETTER_REQUEST_TIMEOUT="2")
    start_run(env, write_digest(DIGEST, "2026-05-01-shared.md"))
    engine = sa.create_engine(pg_url)
    try:
        crew = workers(env, 4)
        victim = crew[0]
        wait_for(lambda: held_by(engine, victim.pid) > 0 and sum(fake_resend.addresses().values()) > 2000,
                 90, "the first worker holding a batch after 2,000 deliveries")
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
        orphaned = held_by(engine, victim.pid)
        logs = wait_all(crew[1:], 120)
        ledger = Ledger(engine)
        [run] = ledger.runs()
        counts = ledger.counts(run.id)
        taken = {w.owner: w for w in ledger.workers(run.id)}
    finally:
        engine.dispose()
    assert run.status == RunStatus.FINISHED, (run.reason, logs)
    assert counts["sent"] == len(emails) and counts["queued"] == counts["sending"] == 0
    assert fake_resend.addresses() == Counter({e: 1 for e in emails}), "every reader exactly one email"
    assert orphaned >= 1, "the worker was killed holding a batch"
    assert len(taken) == 4 and all(w.sent > 0 for w in taken.values()), \
        f"every worker took part: {[(o, w.sent) for o, w in taken.items()]}"
    arrivals = sorted(fake_resend.state.arrivals)
    requests = len(arrivals)
    assert requests >= len(emails) / 100
    # All of them together, never above send_rate: any 26 requests in a row span at least 25
    # intervals, give or take the jitter of their arrival.
    span = 25
    tightest = min(b - a for a, b in zip(arrivals, arrivals[span:]))
    assert tightest >= span / rate * 0.9, f"{span + 1} requests within {tightest:.2f} s"
    assert fake_resend.state.requests.get(429, 0) == 0


def test_a_quota_error_in_one_worker_pauses_the_run_for_every_worker(pg_url, fake_resend, session_settings,
                                                                     write_digest):
    emails = populate(pg_url, session_settings, 3_000)
    fake_resend.switches.delay = 0.1
    env = environment(pg_url, fake_resend, NEWSLETTER_SEND_RATE="40", NEWSLETTER_BATCH_SIZE="50")
    start_run(env, write_digest(DIGEST, "2026-05-01-quota.md"))
    crew = workers(env, 3)
    wait_for(lambda: sum(fake_resend.addresses().values()) >= 500, 90, "500 deliveries")
    fake_resend.switches.quota = "daily"
    logs = wait_all(crew, 120)  # no run is left being sent: every worker exits
    fake_resend.switches.quota = None
    engine = sa.create_engine(pg_url)
    try:
        ledger = Ledger(engine)
        [run] = ledger.runs()
        counts = ledger.counts(run.id)
    finally:
        engine.dispose()
    assert run.status == RunStatus.PAUSED and run.reason.startswith("quota exceeded"), run.reason
    assert run.transient, "the scheduler tries a quota pause again later"
    assert counts["sending"] == 0 and counts["sent"] < len(emails) and counts["queued"] > 0
    assert sum("paused for every worker" in log for log in logs) >= 1
    assert max(fake_resend.addresses().values()) == 1
    result = subprocess.run([*COMMAND, "resume", str(run.id), "--yes"], env=env, capture_output=True,
                            text=True, timeout=240)
    assert result.returncode == 0, result.stderr
    assert fake_resend.addresses() == Counter({e: 1 for e in emails})


def test_runs_shows_each_worker_and_pause_stops_them_all(pg_url, fake_resend, session_settings, write_digest):
    populate(pg_url, session_settings, 2_000)
    env = environment(pg_url, fake_resend, NEWSLETTER_SEND_RATE="5", NEWSLETTER_BATCH_SIZE="20")
    start_run(env, write_digest(DIGEST, "2026-05-01-pause.md"))
    crew = workers(env, 2)
    wait_for(lambda: sum(fake_resend.addresses().values()) >= 100, 90, "100 deliveries")
    shown = subprocess.run([*COMMAND, "runs", "1"], env=env, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "2 processes took part, 2 at work now" in shown.stdout, shown.stdout
    for process in crew:
        assert f":{process.pid} " in shown.stdout
    paused = subprocess.run([*COMMAND, "pause", "1"], env=env, capture_output=True, text=True, timeout=60)
    assert paused.returncode == 0 and "run 1 paused" in paused.stdout, paused.stderr
    wait_all(crew, 60)  # each stops after its batch in flight, and exits: nothing is being sent
    engine = sa.create_engine(pg_url)
    try:
        ledger = Ledger(engine)
        assert ledger.run(1).status == RunStatus.PAUSED and ledger.counts(1)["sending"] == 0
    finally:
        engine.dispose()
    again = subprocess.run([*COMMAND, "pause", "1"], env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and again.stderr.startswith("error: run 1 is paused, not being sent")
    after = subprocess.run([*COMMAND, "runs", "1"], env=env, capture_output=True, text=True, timeout=60)
    assert "2 processes took part, 0 at work now" in after.stdout, after.stdout


def test_cancelling_a_run_lets_the_workers_batches_in_flight_be_answered_first(pg_url, fake_resend,
                                                                                session_settings, write_digest):
    """`runs cancel` while workers send: the run pauses, every worker stops after its batch in
    flight, and what those batches delivered is recorded as sent, not as maybe delivered."""
    emails = populate(pg_url, session_settings, 1_000)
    fake_resend.switches.delay = 1.5  # every request is in flight a while: the cancel comes mid-request
    env = environment(pg_url, fake_resend, NEWSLETTER_BATCH_SIZE="50")
    start_run(env, write_digest(DIGEST, "2026-05-03-cancel.md"))
    engine = sa.create_engine(pg_url)
    try:
        crew = workers(env, 2)
        wait_for(lambda: all(held_by(engine, p.pid) > 0 for p in crew) and fake_resend.addresses(), 60,
                 "both workers holding a batch after the first deliveries")
        cancelled = subprocess.run([*COMMAND, "runs", "cancel", "1", "--yes"], env=env, capture_output=True,
                                   text=True, timeout=90)
        assert cancelled.returncode == 0, cancelled.stderr
        assert "in flight to be answered" in cancelled.stderr
        wait_all(crew, 60)
        ledger = Ledger(engine)
        counts, run = ledger.counts(1), ledger.run(1)
    finally:
        engine.dispose()
    delivered = fake_resend.addresses()
    assert run.status == RunStatus.CANCELLED
    assert set(delivered.values()) == {1} and len(delivered) < len(emails)
    assert counts["failed"] == 0, "no batch was left to count as maybe delivered"
    assert counts["sent"] == len(delivered) and counts["skipped"] == len(emails) - len(delivered)


def test_a_worker_on_sqlite_is_refused_in_one_line(tmp_path, fake_resend):
    url = f"sqlite:///{tmp_path / 'subscribers.db'}"
    env = environment(url, fake_resend)
    subprocess.run([*COMMAND, "db", "upgrade"], env=env, check=True, capture_output=True, timeout=60)
    result = subprocess.run([*COMMAND, "worker"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr == ("error: workers need PostgreSQL (database_url = \"postgresql://...\"); on SQLite "
                             "one process sends a run: `newsletter send` or the scheduler\n")
    refused = subprocess.run([*COMMAND, "send", str(ROOT / "digests" / "2026-04-22-open-models-weekly.md"),
                              "--workers", "0", "--yes"], env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "--workers 0 needs PostgreSQL" in refused.stderr


def test_an_idle_worker_wakes_as_soon_as_a_run_starts_or_resumes(pg_url, session_settings):
    """A waiting worker LISTENs for the run a `send` or a `resume` starts: its wait of a minute
    ends when the run's transaction commits, not at its next look."""
    import threading

    from newsletter.store import open_engine
    from newsletter.workers import Wakeup

    engine = open_engine(pg_url)
    stop = threading.Event()
    wakeup = Wakeup(engine, stop)
    ledger = Ledger(open_engine(pg_url))
    try:
        assert wakeup.wait(0.01) is False  # listening from here on
        for start in ("create", "resume"):
            woke = []
            waiting = threading.Thread(target=lambda: woke.append(wakeup.wait(60)))
            waiting.start()
            if start == "create":
                run = ledger.create_run(issue="woken", digest_path="w.md", digest_sha256="d", settings_sha256="s",
                                        subject="W", provider="outbox", recipients=[])
                ledger.set_status(run.id, RunStatus.PAUSED, "paused by the user")
            else:
                ledger.set_status(run.id, RunStatus.SENDING)
            waiting.join(20)
            assert woke == [True], start
        stopped = threading.Thread(target=lambda: woke.append(wakeup.wait(60)))
        stopped.start()
        stop.set()  # a SIGTERM while idle ends the wait too
        stopped.join(20)
        assert not stopped.is_alive() and woke[-1] is False
    finally:
        wakeup.close()
        engine.dispose()
        ledger.engine.dispose()


def test_a_worker_sends_the_variants_the_run_keeps_and_loads_no_renderer(pg_url, fake_resend, session_settings,
                                                                         write_digest):
    """A worker on another machine needs no digest file and no templates: it sends the run's
    variants as the run keeps them, and never imports the renderer (its start stays short)."""
    emails = populate(pg_url, session_settings, 250)
    env = environment(pg_url, fake_resend)
    digest = write_digest(DIGEST, "2026-05-02-kept.md")
    start_run(env, digest)
    digest.unlink()
    engine = sa.create_engine(pg_url)
    try:
        with engine.begin() as conn:  # only what the run keeps is left to send from, told apart by a mark
            conn.execute(sa.update(run_variants).values(
                html=sa.func.replace(run_variants.c.html, "</body>", "<p>as kept</p></body>")))
            conn.execute(sa.delete(issues))
    finally:
        engine.dispose()
    loaded = ("newsletter.render", "newsletter.digest", "mjml", "premailer", "jinja2", "markdown_it")
    code = ("import sys\nfrom newsletter.cli import main\ncode = main(['worker', '--exit-when-idle'])\n"
            f"print(sorted(m for m in {loaded!r} if m in sys.modules))\nsys.exit(code)")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]", "a worker imports no renderer"
    sent = fake_resend.state.deliveries
    assert Counter(d.to for d in sent) == Counter({e: 1 for e in emails})
    assert all("<p>as kept</p>" in d.html for d in sent)
