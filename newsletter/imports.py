"""Import readers from CSV: Mailchimp, Substack and Buttondown exports, or any CSV with emails.

The rules a careful list owner expects: importing a file twice changes nothing; an address that
unsubscribed, bounced, complained or was forgotten is never made active again; a bad row is
reported with its line and the rest still imported; `dry_run` changes nothing.

The file is read, checked and written a chunk of rows at a time. What an import must remember
from one chunk to the next, the addresses it has met, is kept in a temporary table of the
database, and the summary keeps counts and the first few lines: memory does not grow with the file.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import dataclasses
import datetime as dt
import itertools
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator

import sqlalchemy as sa

from .errors import StoreError, SubscriberError
from .store import insert_many, reader_categories, readers, utcnow
from .subscribers import (STOPPED, TRANSITIONS, Consent, ConsentMethod, Status, Subscribers, clean_name,
                          log_event, new_reader_row, normalize_email, transition)

CHUNK = 5000  # rows checked and written together: an import holds about one chunk in memory
INVALID_SHOWN = 20  # invalid lines the summary lists, with their reasons; the rest are counted
TAGS_COUNTED = 1000  # distinct unmapped tags counted one by one; those of rows beyond are counted together


@dataclass
class Row:
    """One line of the file, read into our terms."""

    line: int
    email: str
    name: str | None = None
    status: Status = Status.ACTIVE
    tags: tuple[str, ...] = ()
    consent_at: dt.datetime | None = None
    consent_ip: str | None = None
    skip: str | None = None  # a reason the format itself gives to leave the row out
    invalid: str | None = None  # what is wrong with the line


# -- formats ------------------------------------------------------------------------------------

class Format:
    name = ""
    title = ""

    def matches(self, headers: set[str]) -> bool:
        raise NotImplementedError

    def for_headers(self, headers: list[str]) -> "Format":
        """This format set up for one file's columns."""
        return self

    def read(self, record: dict[str, str], line: int) -> Row:
        raise NotImplementedError


def _get(record: dict[str, str], *names: str) -> str:
    for name in names:
        value = record.get(name)
        if value:
            return value.strip()
    return ""


def _when(value: str) -> dt.datetime | None:
    """A timestamp as exports write them; naive ones are taken as UTC."""
    value = value.strip()
    if not value:
        return None
    for parse in (lambda v: dt.datetime.fromisoformat(v.replace("Z", "+00:00")),
                  lambda v: dt.datetime.strptime(v, "%Y-%m-%d %H:%M:%S")):
        try:
            when = parse(value)
        except ValueError:
            continue
        return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)
    return None


def _split_tags(value: str) -> tuple[str, ...]:
    value = value.strip()
    if not value:
        return ()
    if value.startswith("["):  # a JSON list
        try:
            return tuple(str(t).strip() for t in json.loads(value) if str(t).strip())
        except ValueError:
            pass
    if value.startswith('"'):  # Mailchimp: "Tag A","Tag B"
        return tuple(t.strip() for t in next(csv.reader([value])) if t.strip())
    return tuple(t.strip() for t in re.split(r"[;,|]", value) if t.strip())


class Mailchimp(Format):
    name, title = "mailchimp", "Mailchimp audience export"
    STANDARD = {"email address", "first name", "last name", "address", "phone number", "birthday",
                "member_rating", "optin_time", "optin_ip", "confirm_time", "confirm_ip", "latitude",
                "longitude", "gmtoff", "dstoff", "timezone", "cc", "region", "last_changed", "leid",
                "euid", "notes", "tags", "company"}

    def __init__(self, groups: tuple[str, ...] = ()):
        self.groups = groups  # the file's group columns: "Group A, Group B" in each cell

    def matches(self, headers: set[str]) -> bool:
        return "email address" in headers and bool(headers & {"leid", "euid", "member_rating", "optin_time"})

    def for_headers(self, headers: list[str]) -> "Mailchimp":
        return Mailchimp(tuple(h for h in headers if h not in self.STANDARD
                               and not h.startswith(("unsub_", "clean_"))))

    def read(self, record: dict[str, str], line: int) -> Row:
        status = Status.ACTIVE
        if _get(record, "unsub_time"):
            status = Status.UNSUBSCRIBED
        elif _get(record, "clean_time"):  # "cleaned": Mailchimp's hard bounces
            status = Status.BOUNCED
        tags = list(_split_tags(_get(record, "tags")))
        for column in self.groups:
            if value := record.get(column):
                tags += [t.strip() for t in value.split(",") if t.strip()]
        name = " ".join(p for p in (_get(record, "first name"), _get(record, "last name")) if p)
        return Row(line, _get(record, "email address"), name or None, status, tuple(tags),
                   _when(_get(record, "confirm_time", "optin_time")) or None,
                   _get(record, "confirm_ip", "optin_ip") or None)


class Substack(Format):
    name, title = "substack", "Substack subscriber export"

    def matches(self, headers: set[str]) -> bool:
        return "email" in headers and bool(headers & {"email_disabled", "active_subscription"})

    def read(self, record: dict[str, str], line: int) -> Row:
        email = _get(record, "email")
        disabled = _get(record, "email_disabled").lower() == "true"
        skip = "deleted Substack account" if email.lower().endswith("@deletion-request.substack.com") else None
        return Row(line, email, _get(record, "name") or None,
                   Status.UNSUBSCRIBED if disabled else Status.ACTIVE, (),
                   _when(_get(record, "created_at")), None, skip)


class Buttondown(Format):
    name, title = "buttondown", "Buttondown subscriber export"
    STATUS = {"unactivated": Status.PENDING, "unsubscribed": Status.UNSUBSCRIBED,
              "removed": Status.UNSUBSCRIBED, "undeliverable": Status.BOUNCED,
              "complained": Status.COMPLAINED}
    SKIP = {"spammy": "marked spammy by Buttondown", "blocked": "blocked in Buttondown"}

    def matches(self, headers: set[str]) -> bool:
        return bool(headers & {"email", "email_address"}) and bool(headers & {"subscriber_type", "type"}) \
            and bool(headers & {"creation_date", "metadata", "secondary_id"})

    def read(self, record: dict[str, str], line: int) -> Row:
        kind = _get(record, "subscriber_type", "type").lower()
        return Row(line, _get(record, "email", "email_address"), None,
                   self.STATUS.get(kind, Status.ACTIVE), _split_tags(_get(record, "tags")),
                   _when(_get(record, "creation_date")), None, self.SKIP.get(kind))


class Generic(Format):
    name, title = "csv", "CSV"
    EMAIL = ("email", "e-mail", "email address", "e-mail address", "email_address", "emailaddress",
             "mail")
    NAME = ("name", "full name", "full_name")
    TAGS = ("categories", "category", "tags", "tag", "interests", "topics", "groups")
    STATUS = {"active": Status.ACTIVE, "subscribed": Status.ACTIVE, "enabled": Status.ACTIVE,
              "confirmed": Status.ACTIVE, "pending": Status.PENDING, "unconfirmed": Status.PENDING,
              "unsubscribed": Status.UNSUBSCRIBED, "disabled": Status.UNSUBSCRIBED,
              "blocklisted": Status.UNSUBSCRIBED, "bounced": Status.BOUNCED, "cleaned": Status.BOUNCED,
              "complained": Status.COMPLAINED}

    def __init__(self, email_column: str | None = None):
        self.email_column = email_column.strip().lower() if email_column else None

    def matches(self, headers: set[str]) -> bool:
        if self.email_column:
            return self.email_column in headers
        return any(h in headers for h in self.EMAIL)

    def for_headers(self, headers: list[str]) -> "Generic":
        return Generic(self.email_column or next(h for h in self.EMAIL if h in headers))

    def read(self, record: dict[str, str], line: int) -> Row:
        name = _get(record, *self.NAME) or " ".join(
            p for p in (_get(record, "first name", "first_name"), _get(record, "last name", "last_name")) if p)
        status_text = _get(record, "status").lower()
        status = self.STATUS.get(status_text, Status.ACTIVE)
        invalid = f"unknown status {status_text!r}" if status_text and status_text not in self.STATUS else None
        return Row(line, _get(record, self.email_column or "email"), name or None, status,
                   _split_tags(_get(record, *self.TAGS)), _when(_get(record, "created_at", "created")),
                   None, invalid=invalid)


FORMATS = {f.name: f for f in (Mailchimp(), Substack(), Buttondown(), Generic())}


# -- reading ------------------------------------------------------------------------------------

LINES_SHOWN = 10  # line numbers the summary lists for lines read as Windows-1252
READ_BLOCK = 1 << 16  # bytes read at a time


@dataclass
class Decoding:
    """Lines that were not valid UTF-8 and were read as Windows-1252: how many, and the first ones."""

    count: int = 0
    lines: list[int] = field(default_factory=list)

    def add(self, line: int) -> None:
        self.count += 1
        if len(self.lines) < LINES_SHOWN:
            self.lines.append(line)


@dataclass
class Source:
    format: Format
    rows: Iterator[Row]
    total: int
    decoding: Decoding  # filled in as the rows are read


def open_source(path: Path, fmt: str | None = None, email_column: str | None = None) -> Source:
    """Recognize the file's format from its header; its rows are read lazily, a line at a time."""
    lines, head = _survey(path)
    try:
        dialect = csv.Sniffer().sniff(head, delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    handle = path.open("rb")
    decoding = Decoding()
    reader = csv.reader(_decoded_lines(handle, decoding), dialect)
    header = next(reader, None)
    if not header:
        handle.close()
        raise SubscriberError(f"{path}: the file is empty")
    columns = [h.strip().lower() for h in header]
    headers = set(columns)
    try:
        chosen = _choose_format(path, header, headers, fmt, email_column).for_headers(columns)
    except SubscriberError:
        handle.close()
        raise

    def rows() -> Iterator[Row]:
        with handle:
            line = reader.line_num + 1
            while True:
                try:
                    values = next(reader)
                except StopIteration:
                    return
                except csv.Error as e:  # e.g. a field larger than the csv module allows
                    yield Row(line, "", invalid=f"unreadable CSV: {e}")
                else:
                    if any(v.strip() for v in values):
                        yield chosen.read(dict(zip(columns, values)), line)
                line = reader.line_num + 1
    return Source(chosen, rows(), max(lines - 1, 0), decoding)


def _decoded_lines(f: BinaryIO, decoding: Decoding) -> Iterator[str]:
    """The file's lines as text, each decoded on its own: UTF-8, else Windows-1252 for that line
    alone (noted in `decoding`), so one stray byte from Excel cannot garble the rest of the file.

    Splitting before decoding is safe: a line break byte is never part of a longer character in
    UTF-8 or Windows-1252. Each line keeps its line break, as the csv module wants it.
    """
    number = 0
    for raw in _physical_lines(f):
        if number == 0 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8):]
        number += 1
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError:
            decoding.add(number)
            yield raw.decode("cp1252", errors="replace")


def _physical_lines(f: BinaryIO) -> Iterator[bytes]:
    """Lines ending in LF, CRLF or a bare CR, as a text file opened with newline="" would give them.

    Read a block at a time: `for line in f` splits on LF alone, so a file whose lines end in bare
    CRs (old Mac files, Excel's "Macintosh" CSV) would be read whole as one line.
    """
    rest = b""
    while block := f.read(READ_BLOCK):
        lines = (rest + block).splitlines(keepends=True)  # bytes split on LF, CRLF and CR only
        rest = b"" if lines[-1].endswith(b"\n") else lines.pop()  # a CR may be half a CRLF
        yield from lines
    if rest:
        yield rest


def _survey(path: Path) -> tuple[int, str]:
    """One streaming pass: the line count (for progress) and the start (to sniff the delimiter)."""
    newlines = returns = 0
    head, last = b"", b""
    try:
        with path.open("rb") as f:
            while block := f.read(1 << 20):
                head, last = head or block[:65536], block
                newlines += block.count(b"\n")
                returns += block.count(b"\r")
    except OSError as e:
        raise SubscriberError(f"{path}: cannot read: {e.strerror}") from None
    lines = max(newlines, returns) + (bool(last) and not last.endswith((b"\n", b"\r")))
    return lines, head.decode("utf-8", errors="replace")


def _choose_format(path: Path, header: list[str], headers: set[str], fmt: str | None,
                   email_column: str | None) -> Format:
    if email_column:
        chosen: Format = Generic(email_column)
        if not chosen.matches(headers):
            raise SubscriberError(f"{path}: no column {email_column!r} (columns: {', '.join(header)})")
    elif fmt:
        chosen = FORMATS[fmt]
        if not chosen.matches(headers):
            raise SubscriberError(f"{path}: does not look like a {chosen.title} "
                                  f"(columns: {', '.join(header)})")
    else:
        found = next((f for f in FORMATS.values() if f.matches(headers)), None)
        if found is None:
            raise SubscriberError(f"{path}: no email column found (columns: {', '.join(header)}); "
                                  "name it with --email-column")
        chosen = found
    return chosen


# -- importing ----------------------------------------------------------------------------------

@dataclass
class ImportSummary:
    """What an import did, in counts, and a bounded sample of its lines: its size does not grow
    with the file."""

    path: Path
    format: str
    dry_run: bool
    added: Counter = field(default_factory=Counter)  # by status
    updated: int = 0
    unchanged: int = 0
    skipped: Counter = field(default_factory=Counter)  # by reason
    invalid: list[tuple[int, str]] = field(default_factory=list)  # (line, reason): the first INVALID_SHOWN
    invalid_count: int = 0  # all of them
    unmapped: Counter = field(default_factory=Counter)  # tag -> rows, for the first TAGS_COUNTED tags
    unmapped_uncounted: int = 0  # tags of rows beyond those
    decoding: Decoding = field(default_factory=Decoding)  # lines read as Windows-1252

    def add_invalid(self, line: int, reason: str) -> None:
        self.invalid_count += 1
        if len(self.invalid) < INVALID_SHOWN:
            self.invalid.append((line, reason))

    def add_unmapped(self, tag: str) -> None:
        if tag in self.unmapped or len(self.unmapped) < TAGS_COUNTED:
            self.unmapped[tag] += 1
        else:
            self.unmapped_uncounted += 1

    def report_lines(self) -> list[str]:
        added = sum(self.added.values())
        detail = ", ".join(f"{n} {status}" for status, n in sorted(self.added.items()))
        lines = [f"{self.path}: {self.format}",
                 f"{'would add' if self.dry_run else 'added'} {added}{f' ({detail})' if added else ''}, "
                 f"{'would update' if self.dry_run else 'updated'} {self.updated}, "
                 f"unchanged {self.unchanged}, skipped {sum(self.skipped.values())}, "
                 f"invalid {self.invalid_count}"]
        lines += [f"skipped {n}: {reason}" for reason, n in self.skipped.most_common()]
        lines += [f"invalid: line {line}: {reason}" for line, reason in self.invalid]
        if more := self.invalid_count - len(self.invalid):
            lines.append(f"invalid: and {more} more line{'s' if more > 1 else ''}")
        if self.decoding.count:
            shown = ", ".join(str(n) for n in self.decoding.lines)
            more = self.decoding.count - len(self.decoding.lines)
            plural = "s" if self.decoding.count > 1 else ""
            lines.append(f"not valid UTF-8, read as Windows-1252: line{plural} {shown}"
                         f"{f' and {more} more' if more else ''}")
        if self.unmapped:
            shown = self.unmapped.most_common(10)
            tags = ", ".join(f"{tag!r} ({n} row{'s' if n != 1 else ''})" for tag, n in shown)
            if more := len(self.unmapped) - len(shown):
                tags += f" and {'over ' if self.unmapped_uncounted else ''}{more} more"
            lines.append(f"tags not mapped to a category: {tags}; map one with --map-tag 'TAG=slug'")
        if self.dry_run:
            lines.append("dry run: nothing was changed")
        return lines


def import_csv(subs: Subscribers, path: Path, *, fmt: str | None = None, email_column: str | None = None,
               map_tags: dict[str, str] | None = None, categories: Iterable[str] = (),
               dry_run: bool = False, progress: Callable[[int, int], None] | None = None,
               chunk_size: int | None = None) -> ImportSummary:
    """Import the readers of a CSV file, `chunk_size` rows (CHUNK) at a time; see the module
    docstring for the rules."""
    path = Path(path)
    extra = subs.check_categories(categories)
    mapping = _tag_mapping(subs, map_tags or {})
    source = open_source(path, fmt, email_column)
    summary = ImportSummary(path, source.format.title, dry_run, decoding=source.decoding)
    done = 0
    with _importer(subs, summary, mapping, extra, f"{source.format.name}:{path.name}") as importer:
        for chunk in _chunks(source.rows, chunk_size or CHUNK):
            importer.import_chunk(chunk)
            done += len(chunk)
            if progress:
                progress(done, source.total)
    if not dry_run:
        with subs.engine.begin() as conn:
            log_event(conn, None, "import", file=path.name, format=source.format.name,
                      added=sum(summary.added.values()), updated=summary.updated)
    return summary


def _chunks(rows: Iterator[Row], size: int) -> Iterator[list[Row]]:
    while chunk := list(itertools.islice(rows, size)):
        yield chunk


def _tag_mapping(subs: Subscribers, map_tags: dict[str, str]) -> dict[str, str]:
    """Tag (lowercased) -> category slug: the given map, plus every slug and display name as is."""
    mapping = {slug.lower(): slug for slug in subs.categories}
    mapping |= {name.lower(): slug for slug, name in subs.categories.items()}
    for tag, slug in map_tags.items():
        subs.check_categories([slug])
        mapping[tag.strip().lower()] = slug
    return mapping


@dataclass
class _Plan:
    """What one chunk of the file writes, decided before anything is written."""

    new_rows: list[dict] = field(default_factory=list)  # from new_reader_row
    new_slugs: list[tuple[str, ...]] = field(default_factory=list)  # the categories of each
    links: list[dict] = field(default_factory=list)  # categories added to known readers
    changes: list[tuple[int, Status, dict]] = field(default_factory=list)  # reader id, old status, columns

    def write(self, conn: sa.Connection) -> None:
        if self.new_rows:
            # A plain executemany, then the ids by address: RETURNING with executemany runs one
            # statement per row on SQLite.
            insert_many(conn, readers, self.new_rows)
            ids = dict(conn.execute(sa.select(readers.c.email, readers.c.id).where(
                readers.c.email.in_([r["email"] for r in self.new_rows]))).all())
            self.links += [{"reader_id": ids[r["email"]], "category": s}
                           for r, slugs in zip(self.new_rows, self.new_slugs) for s in slugs]
        insert_many(conn, reader_categories, self.links)
        for reader_id, old_status, change in self.changes:
            if change:
                conn.execute(sa.update(readers).where(readers.c.id == reader_id).values(**change))
            if "status" in change:
                log_event(conn, reader_id, "status", old=old_status.value, new=change["status"],
                          reason="import")


class _Seen:
    """The addresses met so far in one import, each with the status its lines gave it, so that the
    same address twice in a file counts once however far apart the lines are.

    They are kept in a temporary table of the import's connection, not in memory: a dict of ten
    million addresses would take over a gigabyte, and the import's memory would grow with the
    file. A dry run keeps them there too; a temporary table is the connection's own and goes with
    it, so the database is left unchanged. The statements are built once: one built per chunk
    around its list of addresses ends up in reference cycles that Python frees late, and the
    import's memory would creep up again.
    """

    def __init__(self, conn: sa.Connection):
        self.conn = conn
        self.postgresql = conn.dialect.name == "postgresql"
        schema = {"sqlite": "temp", "postgresql": "pg_temp"}.get(conn.dialect.name)
        self.table = table = sa.Table("import_seen", sa.MetaData(),
                                      sa.Column("email", sa.String(320), primary_key=True),
                                      sa.Column("status", sa.String(16), nullable=False),
                                      schema=schema, prefixes=[] if schema else ["TEMPORARY"],
                                      sqlite_with_rowid=False)
        if self.postgresql:
            # One index probe per address, whatever the planner thinks: for `email IN (...)` it
            # reads the whole table (narrow rows, no statistics) for every chunk, a cost that
            # grows with the file.
            self._find = sa.text(
                "SELECT s.email, s.status FROM unnest(CAST(:emails AS text[])) AS u(email) CROSS JOIN LATERAL "
                f"(SELECT email, status FROM {schema}.{table.name} WHERE email = u.email LIMIT 1) AS s")
            self._add = sa.text(f"INSERT INTO {schema}.{table.name} (email, status) "
                                "SELECT * FROM unnest(CAST(:emails AS text[]), CAST(:statuses AS text[]))")
        else:
            self._find = sa.select(table.c.email, table.c.status).where(
                table.c.email.in_(sa.bindparam("emails", expanding=True)))
        self._change = sa.update(table).where(table.c.email == sa.bindparam("b_email")).values(
            status=sa.bindparam("b_status"))

    def __enter__(self) -> "_Seen":
        with self.conn.begin():
            # The schema names only ever a temporary table; one may be left on this pooled
            # connection by an import that failed.
            self.conn.execute(sa.schema.DropTable(self.table, if_exists=True))
            self.conn.execute(sa.schema.CreateTable(self.table))
        return self

    def __exit__(self, kind, error, traceback) -> None:
        try:
            with self.conn.begin():
                self.conn.execute(sa.schema.DropTable(self.table, if_exists=True))
        except (StoreError, sa.exc.SQLAlchemyError):
            if error is None:
                raise  # else the first error is the one to tell; the next import drops the table

    def statuses(self, addresses: Iterable[str]) -> dict[str, Status]:
        """The status each of these addresses was given by earlier chunks, if it was met there."""
        rows = self.conn.execute(self._find, {"emails": list(addresses)})
        return {email: Status(status) for email, status in rows}

    def record(self, before: dict[str, Status], after: dict[str, Status]) -> None:
        """Store what a chunk changed: `before` as `statuses` gave it, `after` with the chunk's lines."""
        new = [(address, status.value) for address, status in after.items() if address not in before]
        if new and self.postgresql:
            emails, statuses = zip(*new)
            self.conn.execute(self._add, {"emails": list(emails), "statuses": list(statuses)})
        elif new:
            insert_many(self.conn, self.table, [{"email": email, "status": status} for email, status in new])
        changed = [{"b_email": address, "b_status": status.value} for address, status in after.items()
                   if address in before and before[address] != status]
        if changed:
            self.conn.execute(self._change, changed)


@contextlib.contextmanager
def _importer(subs: Subscribers, summary: ImportSummary, mapping: dict[str, str], extra: tuple[str, ...],
              consent_source: str) -> Iterator["_Importer"]:
    """An importer on a connection of its own, which keeps the addresses it has met (see `_Seen`)."""
    with subs.engine.connect() as conn, _Seen(conn) as seen:
        yield _Importer(subs, conn, seen, summary, mapping, extra, consent_source)


class _Importer:
    """One import, a chunk of rows at a time: each chunk is checked, planned and written (unless a
    dry run) in one transaction. What it keeps between chunks is counts and `_Seen`, so its
    memory is that of one chunk whatever the size of the file."""

    def __init__(self, subs: Subscribers, conn: sa.Connection, seen: _Seen, summary: ImportSummary,
                 mapping: dict[str, str], extra: tuple[str, ...], consent_source: str):
        self.subs, self.conn, self.seen = subs, conn, seen
        self.summary, self.mapping, self.extra = summary, mapping, extra
        self.consent_source = consent_source

    def import_chunk(self, rows: list[Row]) -> None:
        """Check the rows, plan what they change, and write it (unless a dry run) in one transaction."""
        addressed = [(row, address) for row in rows if (address := self._address(row)) is not None]
        if not addressed:
            return
        with self.conn.begin():
            earlier = self.seen.statuses({address for _, address in addressed})
            wanted, seen = self._wanted(addressed, earlier)
            self.seen.record(earlier, seen)
            if wanted:
                plan = self._plan(self.conn, wanted)
                if not self.summary.dry_run:
                    plan.write(self.conn)

    def _wanted(self, rows: list[tuple[Row, str]], earlier: dict[str, Status]
                ) -> tuple[dict[str, tuple[Row, tuple[str, ...]]], dict[str, Status]]:
        """Address -> (row, categories) for the rows that count: the first line of each address,
        unless a later line stops the reader; and the status each address has been given so far
        (`earlier`, from the chunks before, with this chunk's lines)."""
        seen = dict(earlier)
        wanted: dict[str, tuple[Row, tuple[str, ...]]] = {}
        for row, address in rows:
            if address in seen:
                if not (row.status in STOPPED and seen[address] not in STOPPED):
                    self.summary.skipped["the same address is on an earlier line"] += 1
                    continue
                if address in wanted:  # the earlier line is in this chunk: it takes the stop
                    first, slugs = wanted[address]
                    wanted[address] = (dataclasses.replace(first, status=row.status), slugs)
                    seen[address] = row.status
                    continue
            seen[address] = row.status
            wanted[address] = (row, self._slugs(row))
        return wanted, seen

    def _address(self, row: Row) -> str | None:
        """The row's address, normalized; None for a row that is invalid or skipped (counted)."""
        if row.invalid:
            self.summary.add_invalid(row.line, row.invalid)
        elif row.skip:
            self.summary.skipped[row.skip] += 1
        else:
            try:
                return normalize_email(row.email)
            except SubscriberError as e:
                self.summary.add_invalid(row.line, str(e))
        return None

    def _slugs(self, row: Row) -> tuple[str, ...]:
        """The categories a row gets: --categories, plus its tags that map to one (others counted)."""
        slugs = list(self.extra)
        for tag in row.tags:
            slug = self.mapping.get(tag.lower())
            if slug is None:
                self.summary.add_unmapped(tag)
            elif slug not in slugs:
                slugs.append(slug)
        return tuple(slugs)

    def _plan(self, conn: sa.Connection, wanted: dict[str, tuple[Row, tuple[str, ...]]]) -> _Plan:
        forgotten = self.subs.forgotten(list(wanted), conn)
        known, categories = _known_readers(conn, [a for a in wanted if a not in forgotten])
        plan, now = _Plan(), utcnow()
        for address, (row, slugs) in wanted.items():
            if address in forgotten:
                self.summary.skipped["forgotten at the reader's request"] += 1
            elif address in known:
                self._update(plan, known[address], row, slugs, categories.get(known[address].id, set()), now)
            else:
                consent = Consent(ConsentMethod.IMPORT, source=self.consent_source, ip=row.consent_ip,
                                  at=row.consent_at)
                plan.new_rows.append(new_reader_row(address, name=row.name, status=row.status,
                                                    consent=consent, now=now))
                plan.new_slugs.append(slugs)
                self.summary.added[row.status.value] += 1
        return plan

    def _update(self, plan: _Plan, found, row: Row, slugs: tuple[str, ...], current: set[str],
                now: dt.datetime) -> None:
        """Plan what a row may change on a known reader: the file may stop a reader (unsubscribed
        there) or confirm a pending one, fill an empty name and add categories; never more."""
        status = Status(found.status)
        if status in STOPPED and row.status not in STOPPED:
            self.summary.skipped[f"{status.value} here: an import never makes them active again"] += 1
            return
        change: dict = {}
        if row.status != status and row.status in TRANSITIONS[status] and \
                (row.status in STOPPED or status == Status.PENDING):
            change = transition(status, row.status, now)
        name = clean_name(row.name)
        if name and not found.name:
            change["name"] = name
        added = [s for s in slugs if s not in current]
        if change or added:
            plan.links += [{"reader_id": found.id, "category": s} for s in added]
            plan.changes.append((found.id, status, change))
            self.summary.updated += 1
        else:
            self.summary.unchanged += 1


def _known_readers(conn: sa.Connection, addresses: list[str]) -> tuple[dict, dict[int, set[str]]]:
    """The readers already stored under these addresses (id, email, name, status), and their categories."""
    known = {r.email: r for r in conn.execute(
        sa.select(readers.c.id, readers.c.email, readers.c.name, readers.c.status)
        .where(readers.c.email.in_(addresses)))} if addresses else {}
    categories: dict[int, set[str]] = {}
    if known:
        for reader_id, slug in conn.execute(
                sa.select(reader_categories.c.reader_id, reader_categories.c.category)
                .where(reader_categories.c.reader_id.in_([r.id for r in known.values()]))):
            categories.setdefault(reader_id, set()).add(slug)
    return known, categories
