"""Import readers from CSV: Mailchimp, Substack and Buttondown exports, or any CSV with emails.

The rules a careful list owner expects: importing a file twice changes nothing; an address that
unsubscribed, bounced, complained or was forgotten is never made active again; a bad row is
reported with its line and the rest still imported; `dry_run` changes nothing.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import ipaddress
import datetime as dt
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import sqlalchemy as sa

from .errors import SubscriberError
from .store import insert_many, reader_categories, readers, suppressions, utcnow
from .subscribers import (STOPPED, TRANSITIONS, Status, Subscribers, email_hash, log_event, new_token,
                          normalize_email, transition)

CHUNK = 5000


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

    def __post_init__(self) -> None:
        if self.name:
            self.name = self.name[:200]
        if self.consent_ip:
            self.consent_ip = _ip(self.consent_ip)


IPV4_RE = re.compile(r"(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}")


def _ip(text: str) -> str | None:
    """The address in its standard form, or None if it is not one (it is only a record)."""
    text = text.strip()
    if IPV4_RE.fullmatch(text):  # the usual case, without ipaddress's slower parse
        return text
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


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

@dataclass
class Source:
    format: Format
    rows: Iterator[Row]
    total: int


def open_source(path: Path, fmt: str | None = None, email_column: str | None = None) -> Source:
    """Recognize the file's format from its header; its rows are read lazily, a line at a time."""
    encoding, lines, head = _survey(path)
    try:
        dialect = csv.Sniffer().sniff(head, delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    handle = path.open(encoding=encoding, errors="replace", newline="")
    reader = csv.reader(handle, dialect)
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
    return Source(chosen, rows(), max(lines - 1, 0))


def _survey(path: Path) -> tuple[str, int, str]:
    """One streaming pass: the encoding (UTF-8, else Excel's cp1252), the line count, the start."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    encoding, lines, head, last = "utf-8-sig", 0, b"", b""
    try:
        with path.open("rb") as f:
            while block := f.read(1 << 20):
                head, last = head or block[:65536], block
                lines += block.count(b"\n")
                if encoding == "utf-8-sig":
                    try:
                        decoder.decode(block)
                    except UnicodeDecodeError:
                        encoding = "cp1252"
            if encoding == "utf-8-sig":
                try:
                    decoder.decode(b"", final=True)  # a character cut off at the very end
                except UnicodeDecodeError:
                    encoding = "cp1252"
            lines += bool(last) and not last.endswith(b"\n")
    except OSError as e:
        raise SubscriberError(f"{path}: cannot read: {e.strerror}") from None
    return encoding, lines, head.decode(encoding, errors="ignore")


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
    path: Path
    format: str
    dry_run: bool
    added: Counter = field(default_factory=Counter)  # by status
    updated: int = 0
    unchanged: int = 0
    skipped: Counter = field(default_factory=Counter)  # by reason
    invalid: list[tuple[int, str]] = field(default_factory=list)
    unmapped: Counter = field(default_factory=Counter)  # tag -> rows

    def report_lines(self) -> list[str]:
        added = sum(self.added.values())
        detail = ", ".join(f"{n} {status}" for status, n in sorted(self.added.items()))
        lines = [f"{self.path}: {self.format}",
                 f"{'would add' if self.dry_run else 'added'} {added}{f' ({detail})' if added else ''}, "
                 f"{'would update' if self.dry_run else 'updated'} {self.updated}, "
                 f"unchanged {self.unchanged}, skipped {sum(self.skipped.values())}, "
                 f"invalid {len(self.invalid)}"]
        lines += [f"skipped {n}: {reason}" for reason, n in self.skipped.most_common()]
        lines += [f"invalid: line {line}: {reason}" for line, reason in self.invalid]
        if self.unmapped:
            tags = ", ".join(f"{tag!r} ({n} row{'s' if n != 1 else ''})" for tag, n in self.unmapped.most_common(10))
            lines.append(f"tags not mapped to a category: {tags}; map one with --map-tag 'TAG=slug'")
        if self.dry_run:
            lines.append("dry run: nothing was changed")
        return lines


def import_csv(subs: Subscribers, path: Path, *, fmt: str | None = None, email_column: str | None = None,
               map_tags: dict[str, str] | None = None, categories: Iterable[str] = (),
               dry_run: bool = False, progress: Callable[[int, int], None] | None = None) -> ImportSummary:
    """Import the readers of a CSV file; see the module docstring for the rules."""
    extra = subs.check_categories(categories)
    mapping = _tag_mapping(subs, map_tags or {})
    source = open_source(Path(path), fmt, email_column)
    summary = ImportSummary(Path(path), source.format.title, dry_run)
    consent_source = f"{source.format.name}:{Path(path).name}"[:300]
    seen: dict[str, Status] = {}  # address -> the status its rows so far gave it
    done = 0
    chunk: list[Row] = []
    for row in source.rows:
        chunk.append(row)
        if len(chunk) == CHUNK:
            done += _import_chunk(subs, chunk, seen, mapping, extra, consent_source, summary)
            chunk = []
            if progress:
                progress(done, source.total)
    done += _import_chunk(subs, chunk, seen, mapping, extra, consent_source, summary)
    if progress:
        progress(done, source.total)
    if not dry_run:
        with subs.engine.begin() as conn:
            log_event(conn, None, "import", file=Path(path).name, format=source.format.name,
                               added=sum(summary.added.values()), updated=summary.updated)
    return summary


def _tag_mapping(subs: Subscribers, map_tags: dict[str, str]) -> dict[str, str]:
    """Tag (lowercased) -> category slug: the given map, plus every slug and display name as is."""
    mapping = {slug.lower(): slug for slug in subs.categories}
    mapping |= {name.lower(): slug for slug, name in subs.categories.items()}
    for tag, slug in map_tags.items():
        subs.check_categories([slug])
        mapping[tag.strip().lower()] = slug
    return mapping


def _import_chunk(subs: Subscribers, rows: list[Row], seen: dict[str, Status], mapping: dict[str, str],
                  extra: tuple[str, ...], consent_source: str, summary: ImportSummary) -> int:
    by_address: dict[str, tuple[Row, str, tuple[str, ...]]] = {}
    for row in rows:
        if row.invalid:
            summary.invalid.append((row.line, row.invalid))
            continue
        if row.skip:
            summary.skipped[row.skip] += 1
            continue
        try:
            address = normalize_email(row.email)
        except SubscriberError as e:
            summary.invalid.append((row.line, str(e)))
            continue
        if address in seen:
            # An address twice: the first line counts, unless a later one stops the reader.
            if not (row.status in STOPPED and seen[address] not in STOPPED):
                summary.skipped["the same address is on an earlier line"] += 1
                continue
            if address in by_address:  # the earlier line is in this chunk: it takes the stop
                first, _, slugs = by_address[address]
                by_address[address] = (dataclasses.replace(first, status=row.status), address, slugs)
                seen[address] = row.status
                continue
        seen[address] = row.status
        slugs = list(extra)
        for tag in row.tags:
            slug = mapping.get(tag.lower())
            if slug is None:
                summary.unmapped[tag] += 1
            elif slug not in slugs:
                slugs.append(slug)
        by_address[address] = (row, address, tuple(slugs))
    wanted = list(by_address.values())
    if not wanted:
        return len(rows)

    with subs.engine.begin() as conn:
        addresses = [address for _, address, _ in wanted]
        hashes = {address: email_hash(address) for address in addresses}
        forgotten = set(conn.execute(sa.select(suppressions.c.email_hash).where(
            suppressions.c.email_hash.in_(hashes.values()))).scalars())
        existing = {r.email: r for r in conn.execute(
            sa.select(readers.c.id, readers.c.email, readers.c.name, readers.c.status)
            .where(readers.c.email.in_(addresses)))}
        current: dict[int, set[str]] = {}
        if existing:
            for reader_id, slug in conn.execute(sa.select(reader_categories.c.reader_id,
                                                          reader_categories.c.category)
                                                .where(reader_categories.c.reader_id.in_(
                                                    [r.id for r in existing.values()]))):
                current.setdefault(reader_id, set()).add(slug)

        new_rows, new_slugs, changes, links = [], [], [], []
        now = utcnow()
        for row, address, slugs in wanted:
            if hashes[address] in forgotten:
                summary.skipped["forgotten at the reader's request"] += 1
                continue
            found = existing.get(address)
            if found is None:
                new_rows.append({
                    "email": address, "name": row.name, "status": row.status.value, "token": new_token(),
                    "created_at": now, "status_changed_at": now,
                    "confirmed_at": (row.consent_at or now) if row.status == Status.ACTIVE else None,
                    "unsubscribed_at": now if row.status == Status.UNSUBSCRIBED else None,
                    "consent_at": row.consent_at or now, "consent_method": "import",
                    "consent_ip": row.consent_ip, "consent_source": consent_source})
                new_slugs.append(slugs)
                summary.added[row.status.value] += 1
                continue
            status = Status(found.status)
            if status in STOPPED and row.status not in STOPPED:
                summary.skipped[f"{status.value} here: an import never makes them active again"] += 1
                continue
            # The file may stop a reader (unsubscribed there) or confirm a pending one, never more.
            change: dict = {}
            if row.status != status and row.status in TRANSITIONS[status] and \
                    (row.status in STOPPED or status == Status.PENDING):
                change = transition(status, row.status, now)
            if row.name and not found.name:
                change["name"] = row.name
            added_slugs = [s for s in slugs if s not in current.get(found.id, set())]
            links += [{"reader_id": found.id, "category": s} for s in added_slugs]
            if change or added_slugs:
                summary.updated += 1
                changes.append((found.id, status, change))
            else:
                summary.unchanged += 1

        if summary.dry_run:
            return len(rows)
        if new_rows:
            # A plain executemany, then the ids by address: RETURNING with executemany runs one
            # statement per row on SQLite.
            insert_many(conn, readers, new_rows)
            ids = dict(conn.execute(sa.select(readers.c.email, readers.c.id).where(
                readers.c.email.in_([r["email"] for r in new_rows]))).all())
            links += [{"reader_id": ids[r["email"]], "category": s} for r, slugs in zip(new_rows, new_slugs)
                      for s in slugs]
        insert_many(conn, reader_categories, links)
        for reader_id, old_status, change in changes:
            if change:
                conn.execute(sa.update(readers).where(readers.c.id == reader_id).values(**change))
            if "status" in change:
                log_event(conn, reader_id, "status", old=old_status.value, new=change["status"],
                                   reason="import")
    return len(rows)
