"""Workers: processes, on any machines that reach the PostgreSQL database, sharing the batches of
every run being sent.

`newsletter send` and the scheduler create a run; `newsletter worker` processes take part in
every run whose status is `sending`, each claiming batches of its own (`Ledger.claim`: `FOR
UPDATE SKIP LOCKED` and a lease per batch). All of them together stay under `send_rate`
(`pace.Pace`); a pause by any of them (a quota error, `newsletter pause RUN`, Ctrl-C on the
`send`) stops every one after its batch in flight. A worker that dies leaves its batch leased
until `batch_lease` runs out; another worker then sends it again, as the same request.

A worker sends each run's variants as the run keeps them, rendered when it was created
(`run_variants`), so it needs no digest files and no templates, and imports no renderer: only
the same settings (`name`, `sender`, `reply_to`, `base_url`: checked against the run) and the
secret key for view links. A run created before runs kept their variants is rendered from the
digest text the run recorded (the archive's copy). An idle worker LISTENs
for the NOTIFY that starting or resuming a run sends, and takes the run up at once.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from .config import Settings, load_secret_key
from .errors import NewsletterError, SendError
from .ledger import RUNS_CHANNEL, Ledger, Run
from .providers import Provider, make_provider
from .send import Composer, Sender, Variant, digest_sha256, render_run, run_variants, settings_sha256
from .store import issues

log = logging.getLogger("newsletter.worker")
IDLE_FIRST, IDLE_MOST = 0.2, 5.0  # seconds between looks for new runs: backing off while idle


class WorkersNeedPostgres(SendError):
    pass


def check_shared(engine: Engine) -> None:
    """Workers share a run through row locks SQLite does not have."""
    if engine.dialect.name != "postgresql":
        raise WorkersNeedPostgres("workers need PostgreSQL (database_url = \"postgresql://...\"); on "
                                  "SQLite one process sends a run: `newsletter send` or the scheduler")


def load_run(settings: Settings, ledger: Ledger, run: Run) -> dict[str, Variant]:
    """The variants of `run`, as it was started: those it keeps, or else rendered from the digest
    text it recorded, or from its file; refused if that changed or the sender settings differ."""
    if run.settings_sha256 and settings_sha256(settings) != run.settings_sha256:
        raise SendError(f"run {run.id}: name, sender, reply_to or base_url differ from the settings "
                        "it was started with", run_id=run.id)
    kept = run_variants(ledger, run.id)
    if kept:
        return kept
    from .digest import load_digest

    with ledger.engine.connect() as conn:
        recorded = conn.execute(sa.select(issues.c.source).where(
            issues.c.slug == run.issue, issues.c.digest_sha256 == run.digest_sha256)).scalar()
    if recorded is not None:
        from .archive import parse_source

        digest = parse_source(recorded, run.issue, settings)
    else:
        digest = load_digest(run.digest_path, settings)
        if digest_sha256(digest.path) != run.digest_sha256:
            raise SendError(f"run {run.id}: {run.digest_path} changed since the run started", run_id=run.id)
    return render_run(settings, ledger, run.id, digest)


class Wakeup:
    """An idle worker's wait for the next run: on its own connection, LISTENing for the NOTIFY
    that starting or resuming a run sends (`ledger.RUNS_CHANNEL`), so a new run is taken up at
    once instead of at the next look. If the connection fails, the wait is a plain one (the
    worker still looks for runs, backing off) and it listens again at the next wait."""

    SLICE = 0.25  # seconds between looks at `stop` while waiting for a notification

    def __init__(self, engine: Engine, stop: threading.Event):
        self.engine, self.stop = engine, stop
        self.raw = None

    def wait(self, seconds: float) -> bool:
        """Wait up to `seconds`, until a run is announced or `stop` is set: True if one was."""
        deadline = time.monotonic() + seconds
        while not self.stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            connection = self._listening()
            if connection is None:
                self.stop.wait(left)
                return False
            try:
                if any(True for _ in connection.notifies(timeout=min(left, self.SLICE), stop_after=1)):
                    return True
            except Exception as e:  # noqa: BLE001  (any driver error: listen again next time)
                log.warning("no longer listening for new runs (%s); looking every few seconds", e)
                self.close()
        return False

    def _listening(self):
        if self.raw is None:
            try:
                self.raw = self.engine.raw_connection()
                self.raw.driver_connection.autocommit = True  # notifications arrive between transactions
                self.raw.driver_connection.execute(f"LISTEN {RUNS_CHANNEL}")
            except Exception:  # noqa: BLE001
                self.close()
                return None
        return self.raw.driver_connection

    def close(self) -> None:
        if self.raw is not None:
            with contextlib.suppress(Exception):
                self.raw.invalidate()  # never back into the pool in LISTEN and autocommit
            self.raw = None


class Worker:
    """One process's share of the sending: every run being sent, batch by batch, until stopped
    (or, with `exit_when_idle`, until no run has work left)."""

    def __init__(self, settings: Settings, engine: Engine, *, provider: Provider | None = None,
                 stop: threading.Event | None = None, exit_when_idle: bool = False):
        check_shared(engine)
        self.settings, self.engine = settings, engine
        self.ledger = Ledger(engine)
        self.provider = provider or make_provider(settings)
        self.stop = stop or threading.Event()
        self.exit_when_idle = exit_when_idle
        self.prepared: dict[int, dict[str, Variant]] = {}  # each run's variants
        self.refused: set[int] = set()  # runs this worker cannot send (logged once)
        self.view_key = load_secret_key(settings)
        self.wakeup = Wakeup(engine, self.stop)

    def run(self) -> None:
        idle = IDLE_FIRST
        while not self.stop.is_set():
            worked = False
            for run in self.ledger.sending_runs():
                if self.stop.is_set():
                    break
                worked |= self._take_part(run)
            if worked:
                idle = IDLE_FIRST
                continue
            if self.exit_when_idle and not self._work_left():
                return
            if self.wakeup.wait(idle):
                idle = IDLE_FIRST
            else:
                idle = min(IDLE_MOST, idle * 2)

    def _work_left(self) -> bool:
        """A run being sent that this worker could still help with."""
        return any(run.id not in self.refused and self.ledger.unfinished(run.id)
                   for run in self.ledger.sending_runs())

    def _take_part(self, run: Run) -> bool:
        if run.id in self.refused:
            return False
        if run.provider != self.provider.name:  # a batch sent again must go where it went before
            return self._refuse(run, f"run {run.id} was started with {run.provider}; this worker's "
                                     f"settings say {self.provider.name}")
        if not self.ledger.unfinished(run.id):
            self.ledger.finish(run.id)
            return False
        try:
            prepared = self.prepared.get(run.id) or self.prepared.setdefault(
                run.id, load_run(self.settings, self.ledger, run))
        except NewsletterError as e:
            return self._refuse(run, str(e))
        composer = Composer(self.settings, run.issue, prepared, view_key=self.view_key)
        s = self.settings
        sender = Sender(self.ledger, self.provider, composer, rate=s.send_rate, batch_size=s.batch_size,
                        max_failures=s.max_failures, lease=s.batch_lease, stop=self.stop)
        log.info("run %d of %s: taking part", run.id, run.issue)
        pause = sender.work(run)
        if pause is None:
            if self.ledger.finish(run.id):
                log.info("run %d of %s: finished", run.id, run.issue)
        elif not self.stop.is_set() and self.ledger.pause(run.id, pause.reason, transient=pause.transient):
            log.warning("run %d of %s: paused for every worker: %s", run.id, run.issue, pause.reason)
        return True

    def _refuse(self, run: Run, why: str) -> bool:
        self.refused.add(run.id)
        log.error("not taking part in run %d: %s", run.id, why)
        return False

    def close(self) -> None:
        self.wakeup.close()
        self.provider.close()


def is_live(worker, lease: float, now) -> bool:
    """Whether a process that took part in a run still does: it holds a batch, or was heard of
    within a lease and has not left."""
    import datetime as dt

    return worker.batches > 0 or (worker.left_at is None and now - worker.seen_at < dt.timedelta(seconds=lease))

