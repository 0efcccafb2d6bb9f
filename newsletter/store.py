"""The database: SQLAlchemy 2 models, the engine, and Alembic migrations applied on first use.

`open_engine(url)` gives an engine whose schema is at the newest revision: the CLI migrates on first
use and creates a missing SQLite file; a server passes `migrate=False, create=False` and gets a
StoreError naming `newsletter db upgrade` instead. SQLite (the default, `subscribers.db` beside
newsletter.toml) and PostgreSQL (psycopg 3) are both supported. Every database error leaves here as
a StoreError (StoreConflict for a broken unique rule), with the driver's error as its cause.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from .errors import StoreConflict, StoreError

DEFAULT_URL = "sqlite:///subscribers.db"
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
MIGRATION_LOCK = 0x6E65_7773_6C65_7474  # PostgreSQL advisory lock key of the migrations: "newslett"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class UTCDateTime(sa.TypeDecorator):
    """Timestamps in UTC, timezone-aware on the way out on every backend (SQLite has no zones)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use newsletter.store.utcnow()")
        return value.astimezone(dt.timezone.utc) if value is not None else None

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=dt.timezone.utc)
        return value


class Base(DeclarativeBase):
    pass


class CategoryRow(Base):
    __tablename__ = "categories"
    slug: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200))


class ReaderRow(Base):
    __tablename__ = "readers"
    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    email: Mapped[str] = mapped_column(sa.String(320), unique=True)  # normalized: see subscribers.py
    name: Mapped[str | None] = mapped_column(sa.String(200))
    status: Mapped[str] = mapped_column(sa.String(16), index=True)
    token: Mapped[str] = mapped_column(sa.String(64), unique=True)  # secret for the reader's links
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    status_changed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    confirmed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    unsubscribed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    consent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    consent_method: Mapped[str | None] = mapped_column(sa.String(16))  # form | import | cli
    consent_ip: Mapped[str | None] = mapped_column(sa.String(45))
    consent_source: Mapped[str | None] = mapped_column(sa.String(300))  # e.g. the imported file
    # Transient bounces in a row, counted once per run; a delivery resets it (see reports.py).
    soft_bounces: Mapped[int] = mapped_column(sa.Integer, server_default="0")  # no Python default: see insert_many
    soft_bounce_run: Mapped[int | None] = mapped_column(sa.Integer)  # the run last counted


class ReaderCategoryRow(Base):
    __tablename__ = "reader_categories"
    reader_id: Mapped[int] = mapped_column(sa.ForeignKey("readers.id", ondelete="CASCADE"),
                                           primary_key=True)
    category: Mapped[str] = mapped_column(sa.ForeignKey("categories.slug", ondelete="CASCADE"),
                                          primary_key=True, index=True)


class SuppressionRow(Base):
    """Forgotten addresses: only a one-way hash, so they are never added again by mistake."""

    __tablename__ = "suppressions"
    email_hash: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    reason: Mapped[str] = mapped_column(sa.String(32))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class EventRow(Base):
    """What happened to a reader and when: status changes, category changes, token rotation."""

    __tablename__ = "events"
    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    reader_id: Mapped[int | None] = mapped_column(sa.ForeignKey("readers.id", ondelete="SET NULL"),
                                                  index=True)
    kind: Mapped[str] = mapped_column(sa.String(32))
    detail: Mapped[str | None] = mapped_column(sa.Text)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class SendRunRow(Base):
    """One sending of one issue: its deliveries are a snapshot of who was due when it began."""

    __tablename__ = "send_runs"
    # At most one open run per issue: two `send`s at once cannot both start one.
    __table_args__ = (sa.Index("ux_send_runs_unfinished_issue", "issue", unique=True,
                               sqlite_where=sa.text("status NOT IN ('finished', 'cancelled')"),
                               postgresql_where=sa.text("status NOT IN ('finished', 'cancelled')")),)
    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    issue: Mapped[str] = mapped_column(sa.String(200), index=True)  # the digest's file name
    digest_path: Mapped[str] = mapped_column(sa.String(1000))
    digest_sha256: Mapped[str] = mapped_column(sa.String(64))  # resume only the same content
    settings_sha256: Mapped[str | None] = mapped_column(sa.String(64))  # ... sent the same way
    subject: Mapped[str] = mapped_column(sa.String(998))
    provider: Mapped[str] = mapped_column(sa.String(16))
    status: Mapped[str] = mapped_column(sa.String(16), index=True)
    reason: Mapped[str | None] = mapped_column(sa.Text)  # why it paused
    # Time may fix what paused it (a quota, an outage): the scheduler tries again with backoff.
    pause_transient: Mapped[bool] = mapped_column(sa.Boolean, default=False, server_default=sa.false())
    auto_retries: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")  # the scheduler's
    # Failed requests in a row, whichever process made them: the run pauses at `max_failures`.
    failures: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
    lease_owner: Mapped[str | None] = mapped_column(sa.String(200))  # the process sending it
    lease_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class DeliveryRow(Base):
    """The ledger: one row per reader of a run, with what happened to their copy."""

    __tablename__ = "deliveries"
    # The provider's id and the batch's key are looked up by value, and are empty while a reader
    # waits: partial indexes, so the million rows a run starts with add nothing to them.
    __table_args__ = (sa.UniqueConstraint("run_id", "reader_id"),
                      sa.Index("ix_deliveries_run_state", "run_id", "state", "id"),
                      sa.Index("ix_deliveries_message_id", "message_id", sqlite_where=sa.text("message_id IS NOT NULL"),
                               postgresql_where=sa.text("message_id IS NOT NULL")),
                      sa.Index("ix_deliveries_batch_key", "batch_key", sqlite_where=sa.text("batch_key IS NOT NULL"),
                               postgresql_where=sa.text("batch_key IS NOT NULL")))
    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(sa.ForeignKey("send_runs.id", ondelete="CASCADE"))
    reader_id: Mapped[int | None] = mapped_column(sa.ForeignKey("readers.id", ondelete="SET NULL"),
                                                  index=True)
    variant: Mapped[str] = mapped_column(sa.String(300))  # the categories the reader's copy has
    state: Mapped[str] = mapped_column(sa.String(16))  # queued | sending | sent | failed | skipped
    reason: Mapped[str | None] = mapped_column(sa.Text)
    message_id: Mapped[str | None] = mapped_column(sa.String(200))  # the provider's
    batch_key: Mapped[str | None] = mapped_column(sa.String(100))  # the idempotency key
    # While a batch is in flight: the address and token it went out with, so that sending it
    # again after a stop is the very same request (cleared once the provider has answered).
    email: Mapped[str | None] = mapped_column(sa.String(320))
    token: Mapped[str | None] = mapped_column(sa.String(64))
    attempts: Mapped[int] = mapped_column(sa.Integer)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class RunVariantRow(Base):
    """A variant of a run's email as rendered when the run was created, reader links still
    placeholders: whoever sends a batch of the run, whenever (a worker on another machine, a resume
    after an upgrade of the templates), sends these very bytes, so a batch sent again is the same
    request and every reader of a variant gets the same email."""

    __tablename__ = "run_variants"
    run_id: Mapped[int] = mapped_column(sa.ForeignKey("send_runs.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(sa.String(300), primary_key=True)  # as deliveries.variant
    subject: Mapped[str] = mapped_column(sa.String(998))
    html: Mapped[str] = mapped_column(sa.Text)
    text: Mapped[str] = mapped_column(sa.Text)
    size: Mapped[int] = mapped_column(sa.Integer)  # bytes of HTML, as the writer was warned of


class SendBatchRow(Base):
    """A batch in flight: its deliveries are `sending` under its key (the idempotency key), and
    `owner` holds it until `lease_until`. A batch whose lease ran out (its process died) is taken
    over by another sender and sent again as the same request."""

    __tablename__ = "send_batches"
    __table_args__ = (sa.Index("ix_send_batches_run_lease", "run_id", "lease_until"),)
    key: Mapped[str] = mapped_column(sa.String(100), primary_key=True)
    run_id: Mapped[int] = mapped_column(sa.ForeignKey("send_runs.id", ondelete="CASCADE"))
    owner: Mapped[str] = mapped_column(sa.String(200))  # host:pid of the sender holding it
    lease_until: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    claimed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class RunWorkerRow(Base):
    """A process that took part in a run, with what it sent: `newsletter runs RUN` shows them."""

    __tablename__ = "run_workers"
    run_id: Mapped[int] = mapped_column(sa.ForeignKey("send_runs.id", ondelete="CASCADE"), primary_key=True)
    owner: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    sent: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
    failed: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
    requests: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    seen_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)  # last heard of: live while recent
    left_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)  # stopped working on the run


class SendLimitRow(Base):
    """The provider's rate limit, shared by every process that sends through it: the earliest
    time (seconds since the epoch, by the database's clock) the next request may start."""

    __tablename__ = "send_limits"
    name: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    next_at: Mapped[float] = mapped_column(sa.Float)


class SignupRow(Base):
    """A signup through the form, awaiting its confirmation link (double opt-in): the consent it
    records is copied to the reader when confirmed."""

    __tablename__ = "signups"
    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    reader_id: Mapped[int] = mapped_column(sa.ForeignKey("readers.id", ondelete="CASCADE"), index=True)
    name: Mapped[str | None] = mapped_column(sa.String(200))
    categories: Mapped[str] = mapped_column(sa.String(1000))  # slugs, comma-separated
    ip: Mapped[str | None] = mapped_column(sa.String(45))
    source: Mapped[str | None] = mapped_column(sa.String(300))  # the page the form was on
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    emailed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)  # confirmation email sent
    confirmed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class RateLimitRow(Base):
    """Requests counted per key (a hashed IP or address) and time window, shared by every
    server process."""

    __tablename__ = "rate_limits"
    key: Mapped[str] = mapped_column(sa.String(100), primary_key=True)
    window_start: Mapped[dt.datetime] = mapped_column(UTCDateTime, primary_key=True)
    count: Mapped[int] = mapped_column(sa.Integer)


class IssueRow(Base):
    """A sent issue as it was sent: the web archive renders it from here, not from the digest file."""

    __tablename__ = "issues"
    slug: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    title: Mapped[str] = mapped_column(sa.String(998))
    date: Mapped[str | None] = mapped_column(sa.String(10))  # YYYY-MM-DD
    source: Mapped[str] = mapped_column(sa.Text)  # the digest file's text
    digest_sha256: Mapped[str] = mapped_column(sa.String(64))
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class ScheduledJobRow(Base):
    """APScheduler 3's SQLAlchemy job store (its own layout): the schedules (see schedule.py)."""

    __tablename__ = "apscheduler_jobs"
    id: Mapped[str] = mapped_column(sa.Unicode(191), primary_key=True)
    next_run_time: Mapped[float | None] = mapped_column(sa.Float(25), index=True)
    job_state: Mapped[bytes] = mapped_column(sa.LargeBinary)


class ReportRow(Base):
    """What the provider reported about one email after it was accepted (Resend's webhooks, bounce
    and complaint reports from a mailbox): delivered, bounced, opened, clicked, ... `report_id`
    (Resend's `svix-id`, a report message's Message-ID) is unique, so a report handled twice is
    stored once. Reports for emails we do not know are kept, with no delivery."""

    __tablename__ = "reports"
    __table_args__ = (sa.UniqueConstraint("source", "report_id", name="uq_reports_source_report_id"),)
    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    source: Mapped[str] = mapped_column(sa.String(16))  # resend | mailbox
    report_id: Mapped[str] = mapped_column(sa.String(200))
    kind: Mapped[str] = mapped_column(sa.String(32), index=True)  # delivered, bounced, ... (see reports.py)
    message_id: Mapped[str | None] = mapped_column(sa.String(200), index=True)  # the provider's id of the email
    delivery_id: Mapped[int | None] = mapped_column(sa.ForeignKey("deliveries.id", ondelete="SET NULL"),
                                                    index=True)
    run_id: Mapped[int | None] = mapped_column(sa.ForeignKey("send_runs.id", ondelete="SET NULL"), index=True)
    reader_id: Mapped[int | None] = mapped_column(sa.ForeignKey("readers.id", ondelete="SET NULL"),
                                                  index=True)
    bounce_type: Mapped[str | None] = mapped_column(sa.String(16))  # permanent | transient | undetermined
    detail: Mapped[str | None] = mapped_column(sa.Text)  # the provider's reason, in its words
    link: Mapped[str | None] = mapped_column(sa.Text)  # the link a click followed
    occurred_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


readers = ReaderRow.__table__
categories = CategoryRow.__table__
reader_categories = ReaderCategoryRow.__table__
suppressions = SuppressionRow.__table__
events = EventRow.__table__
send_runs = SendRunRow.__table__
deliveries = DeliveryRow.__table__
send_batches = SendBatchRow.__table__
run_variants = RunVariantRow.__table__
run_workers = RunWorkerRow.__table__
send_limits = SendLimitRow.__table__
signups = SignupRow.__table__
rate_limits = RateLimitRow.__table__
issues = IssueRow.__table__
scheduled_jobs = ScheduledJobRow.__table__
reports = ReportRow.__table__


def create_engine(url: str, *, create: bool = True) -> Engine:
    """An engine for `url`; SQLite gets foreign keys, WAL and a busy timeout. Every database error
    it raises is a StoreError (see `_translate`). With `create` false, no connection ever creates a
    missing SQLite file."""
    for plain in ("postgresql://", "postgres://"):  # psycopg 3 is the driver we ship
        if url.startswith(plain):
            url = "postgresql+psycopg://" + url[len(plain):]
    try:
        engine = sa.create_engine(url, future=True)
    except (sa.exc.ArgumentError, ImportError) as e:
        raise StoreError(f"cannot use database URL {_safe_url(url)}: {e}") from None
    event.listen(engine, "handle_error", _translate)
    if engine.dialect.name == "sqlite":
        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):  # noqa: ANN001
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys = ON")
            cursor.execute("PRAGMA busy_timeout = 10000")
            if engine.url.database not in (None, "", ":memory:"):
                cursor.execute("PRAGMA journal_mode = WAL")
                cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.close()

        path = sqlite_file(url)
        if not create and path is not None and not _is_uri(engine.url):
            @event.listens_for(engine, "do_connect")
            def _open_existing(_dialect, _record, cargs, cparams):  # noqa: ANN001
                # SQLite creates a missing file on connect; mode=rw refuses to, even if the file
                # is removed while a server runs.
                cargs[0] = f"file:{quote(str(path))}?mode=rw"
                cparams["uri"] = True
    return engine


def _translate(context: sa.engine.ExceptionContext) -> None:
    """Every error the database driver raises becomes a StoreError, its first line the message and
    the driver's error its cause: the CLI and the web app handle one error tree. Errors that are
    not the database's (a bad value given to a column: a bug) are left alone."""
    error = context.sqlalchemy_exception
    if context.is_pre_ping or not isinstance(error, sa.exc.DBAPIError):
        return
    if context.connection is not None and context.connection.get_execution_options().get(RAW_ERRORS):
        return  # a library that handles SQLAlchemy's errors itself (see `raw_errors`)
    kind = StoreConflict if isinstance(error, sa.exc.IntegrityError) else StoreError
    raise kind(f"database: {_first_line(context.original_exception)}")


RAW_ERRORS = "newsletter_raw_errors"


def raw_errors(engine: Engine) -> Engine:
    """The same engine (pool, settings) raising SQLAlchemy's own errors, for a library that
    catches them itself: APScheduler's job store turns an IntegrityError into its own conflict."""
    return engine.execution_options(**{RAW_ERRORS: True})


def _first_line(error: BaseException | None) -> str:
    text = str(error or "").strip()
    return text.splitlines()[0] if text else type(error).__name__


def insert_many(conn: sa.Connection, table: sa.Table, rows: list[dict]) -> None:
    """Bulk insert of many rows with the same keys, several times faster than `conn.execute(insert, rows)`.

    SQLAlchemy builds and type-processes the parameters of every row on its own; here each
    column's bind processor runs once per distinct value (timestamps repeat across an import)
    and the driver gets plain tuples.
    """
    if not rows:
        return
    keys = list(rows[0])
    compiled = sa.insert(table).compile(dialect=conn.dialect, column_keys=keys)
    order = list(compiled.positiontup) if compiled.positional else keys
    columns = []
    for key in order:  # column by column: one processor call per distinct value
        values = [row[key] for row in rows]
        process = table.c[key].type._cached_bind_processor(conn.dialect)
        if process is not None:
            memo = {None: None}
            for raw in set(values):
                if raw not in memo:
                    memo[raw] = process(raw)
            values = [memo[v] for v in values]
        columns.append(values)
    params = list(zip(*columns))
    if not compiled.positional:
        params = [dict(zip(order, p)) for p in params]
    conn.exec_driver_sql(str(compiled), params)


def update_many(conn: sa.Connection, statement, rows: list[dict]) -> None:
    """An executemany of `statement` (with bindparams named as the keys of `rows`) handed to the
    driver directly, its parameters processed once per distinct value as in `insert_many`."""
    if not rows:
        return
    compiled = statement.compile(dialect=conn.dialect)
    if not compiled.positional:  # PostgreSQL's driver is quick enough through SQLAlchemy
        conn.execute(statement, rows)
        return
    order = list(compiled.positiontup)
    constants = compiled.params  # the statement's own literal values
    columns = []
    for key in order:
        values = [row[key] for row in rows] if key in rows[0] else [constants[key]] * len(rows)
        process = compiled.binds[key].type._cached_bind_processor(conn.dialect)
        if process is not None:
            memo = {v: process(v) for v in set(values) if v is not None} | {None: None}
            values = [memo[v] for v in values]
        columns.append(values)
    conn.exec_driver_sql(str(compiled), list(zip(*columns)))


def _safe_url(url: str) -> str:
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - only for an error message
        return "(unparseable)"


def sqlite_file(url: str) -> Path | None:
    """The file of an SQLite URL, made absolute; None for an in-memory or another database."""
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    name = parsed.database
    if _is_uri(parsed):  # sqlite:///file:path?mode=ro&uri=true
        if parsed.query.get("mode") == "memory":
            return None
        name = unquote(urlsplit(name).path) if name.startswith("file:") else name
        if name in ("", ":memory:"):
            return None
    return Path(name).absolute()


def _is_uri(parsed: sa.engine.URL) -> bool:
    return str(parsed.query.get("uri", "")).lower() in ("true", "1", "yes", "on")


def database_exists(url: str) -> bool:
    """False only for an SQLite file that is not there yet (other databases are created by hand)."""
    path = sqlite_file(url)
    return path is None or path.exists()


# -- migrations ---------------------------------------------------------------------------------

def _alembic_config(connection: sa.Connection):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def _scripts():
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config(None))  # type: ignore[arg-type]


# Every command opens the database and checks its revision. Read from the migrations' file names
# (NNNN_what.py holds revision NNNN, a test holds them to Alembic's own reading) and from the
# version table with one query, that costs no Alembic import and no loading of every migration:
# a fifth of a second off the start of every command and worker. Alembic runs only to upgrade.

def _revisions() -> list[str]:
    return sorted(path.name.split("_", 1)[0] for path in (MIGRATIONS / "versions").glob("[0-9]*_*.py"))


def head_revision() -> str:
    return _revisions()[-1]


def _known_revisions() -> set[str]:
    return set(_revisions())


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (Alembic's version table); None for an empty one."""
    with engine.connect() as connection:
        if not sa.inspect(connection).has_table("alembic_version"):
            return None
        return connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to `revision`, keeping every row; one process at a time.

    Several processes may start at once (`newsletter db upgrade` twice, a CLI command and a
    service on first use): each waits for the lock, then Alembic reads the revision, so all but
    the first find the work done. Without the lock two of them would both see an old revision
    and create the same tables.
    """
    from alembic import command
    from alembic.util import CommandError

    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        raw = connection.connection.dbapi_connection if sqlite else None
        previous = raw.isolation_level if sqlite else None
        try:
            if sqlite:
                # pysqlite would BEGIN only before an INSERT (a CREATE TABLE would run on its
                # own, outside any transaction): turn that off and take the write lock first.
                raw.isolation_level = None
                connection.exec_driver_sql("BEGIN IMMEDIATE")
            elif connection.dialect.name == "postgresql":
                connection.execute(sa.select(sa.func.pg_advisory_xact_lock(MIGRATION_LOCK)))
            command.upgrade(_alembic_config(connection), revision)
            connection.commit()
        except CommandError as e:
            raise StoreError(f"cannot upgrade database {_safe_url(str(engine.url))}: {e}") from None
        finally:
            connection.rollback()  # after a failure: nothing half done stays
            if sqlite:
                raw.isolation_level = previous


def open_engine(url: str = DEFAULT_URL, *, migrate: bool = True, create: bool = True) -> Engine:
    """An engine whose schema is at the newest revision.

    `migrate`: bring an older or empty database to it (the CLI does, on first use); when false,
    such a database is a StoreError that names `newsletter db upgrade` (a server). `create`: create
    a missing SQLite file; when false, a missing file is a StoreError naming it.
    """
    if not create and not database_exists(url):
        raise StoreError(f"database file {sqlite_file(url)} does not exist (run `newsletter db "
                         "upgrade` to create it, or check database_url)")
    engine = create_engine(url, create=create)
    try:
        try:
            current = current_revision(engine)
        except StoreError as e:
            raise StoreError(f"cannot open database {_safe_url(url)}: "
                             f"{_first_line(e.__cause__ or e)}") from e.__cause__
        head = head_revision()
        if current is not None and current not in _known_revisions():
            raise StoreError(f"database {_safe_url(url)} is at revision {current}, which this version "
                             f"of newsletter does not know (it needs {head}): a newer version "
                             "upgraded it; run that version")
        if current != head:
            if not migrate:
                state = "has no schema yet" if current is None else \
                    f"is at revision {current}, this version needs {head}"
                raise StoreError(f"database {_safe_url(url)} {state}: run `newsletter db upgrade`")
            upgrade(engine)
    except BaseException:
        engine.dispose()
        raise
    return engine
