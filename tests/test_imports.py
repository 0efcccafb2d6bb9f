"""Importing readers from the exports of other tools, on SQLite and PostgreSQL."""

import datetime as dt
from pathlib import Path

import pytest
import sqlalchemy as sa

from newsletter.errors import SubscriberError
from newsletter.imports import import_csv
from newsletter.store import suppressions, utcnow
from newsletter.subscribers import Consent, ConsentMethod, Status, new_token, unkeyed_email_hash

from .test_subscribers import _fixed_urandom, secret_key  # noqa: F401 (the key comes from the environment)

DATA = Path(__file__).parent / "data"


def snapshot(subs) -> list:
    """Every stored column of every reader, tokens and timestamps included."""
    import sqlalchemy as sa

    with subs.engine.connect() as conn:
        return [list(conn.execute(sa.text(f"SELECT * FROM {table} ORDER BY 1, 2")))
                for table in ("readers", "reader_categories", "suppressions")]


def test_mailchimp_audience_export(subs):
    summary = import_csv(subs, DATA / "mailchimp_subscribed.csv")
    assert summary.format == "Mailchimp audience export"
    assert summary.added == {"active": 8}
    assert summary.invalid == [
        (6, "invalid email address 'not-an-email': An email address must have an @-sign."),
        (7, "empty email address")]
    assert summary.skipped == {"the same address is on an earlier line": 1}  # BEN.OKAFOR@ after ben.okafor@
    alice = subs.get("alice.moreau@example.com")
    assert alice.name == "Alice Moreau" and alice.status == Status.ACTIVE
    assert alice.categories == ("ai-research", "ai-tech", "essays")  # TAGS and the Topics group
    assert alice.consent_method == "import" and alice.consent_ip == "203.0.113.17"
    assert alice.consent_at.isoformat() == "2022-03-14T09:14:02+00:00"
    assert alice.consent_source == "mailchimp:mailchimp_subscribed.csv"
    assert subs.get("ana.lopez@example.com").name == "Ana López"
    assert subs.get("José.Ramírez@exämple.org") is not None
    assert summary.unmapped == {"Book Club": 2}


def test_mailchimp_unsubscribed_export_stops_readers(subs):
    subs.add("tom.becker@example.com", consent=Consent(ConsentMethod.CLI))
    summary = import_csv(subs, DATA / "mailchimp_unsubscribed.csv")
    assert summary.updated == 1 and summary.added == {"unsubscribed": 2}
    assert subs.get("tom.becker@example.com").status == Status.UNSUBSCRIBED
    assert subs.get("omar.haddad@example.org").status == Status.UNSUBSCRIBED


def test_substack_export(subs):
    summary = import_csv(subs, DATA / "substack.csv")
    assert summary.format == "Substack subscriber export"
    assert summary.added == {"active": 6, "unsubscribed": 4}
    assert [line for line, _ in summary.invalid] == [8]
    assert subs.get("olivia.grant@example.org").status == Status.UNSUBSCRIBED  # email_disabled
    assert subs.get("yuki.tanaka@example.jp").status == Status.ACTIVE
    assert subs.get("zoë.lindqvist@exämple.se") is not None


def test_buttondown_export(subs):
    summary = import_csv(subs, DATA / "buttondown.csv")
    assert summary.format == "Buttondown subscriber export"
    assert summary.added == {"active": 5, "pending": 2, "unsubscribed": 3}
    assert summary.skipped == {"marked spammy by Buttondown": 1}
    assert subs.get("amelia.stone@example.com").categories == ("ai-research", "essays")
    assert subs.get("diego.alvarez@example.com").status == Status.ACTIVE


def test_any_csv_with_an_email_column(subs):
    summary = import_csv(subs, DATA / "generic.csv", map_tags={"Book Club": "essays"},
                         categories=["ai-news"])
    assert summary.format == "CSV" and summary.added == {"active": 8}
    assert summary.invalid[0][0] == 7 and "example" in summary.invalid[0][1]
    assert subs.get("john.doe@example.com").name == "Doe, John"
    assert subs.get("luis.fernandez@example.es").categories == ("ai-news", "ai-tech", "essays")
    assert subs.get("sofia.rossi@example.it").categories == ("ai-news", "essays")  # Book Club mapped
    assert subs.get("meg.oneill@example.ie").categories == ("ai-news",)
    assert summary.unmapped == {}


def test_email_column_option(subs, tmp_path):
    path = tmp_path / "people.csv"
    path.write_text("who,contact\nAna,ana@example.com\nBo,bo@example.com\n")
    with pytest.raises(SubscriberError, match="no email column found .*--email-column"):
        import_csv(subs, path)
    assert import_csv(subs, path, email_column="contact").added == {"active": 2}
    assert subs.get("bo@example.com").status == Status.ACTIVE


@pytest.mark.parametrize("name", ["mailchimp_subscribed", "mailchimp_unsubscribed", "substack",
                                  "buttondown", "generic"])
def test_importing_twice_changes_nothing(subs, name):
    import_csv(subs, DATA / f"{name}.csv")
    before = snapshot(subs)
    again = import_csv(subs, DATA / f"{name}.csv")
    assert sum(again.added.values()) == 0 and again.updated == 0
    assert snapshot(subs) == before


@pytest.mark.parametrize("stopped", [Status.UNSUBSCRIBED, Status.BOUNCED, Status.COMPLAINED])
def test_import_never_reactivates(subs, stopped):
    subs.add("alice.moreau@example.com", consent=Consent(ConsentMethod.FORM))
    subs.change_status("alice.moreau@example.com", stopped)
    summary = import_csv(subs, DATA / "mailchimp_subscribed.csv")
    assert subs.get("alice.moreau@example.com").status == stopped
    assert summary.skipped[f"{stopped.value} here: an import never makes them active again"] == 1


def test_import_never_brings_back_a_forgotten_address(subs):
    subs.add("alice.moreau@example.com", consent=Consent(ConsentMethod.FORM))
    subs.forget("alice.moreau@example.com")
    summary = import_csv(subs, DATA / "mailchimp_subscribed.csv")
    assert subs.get("alice.moreau@example.com") is None
    assert summary.skipped["forgotten at the reader's request"] == 1


def test_import_confirms_pending_and_merges_categories(subs):
    subs.add("ana.lopez@example.com", status=Status.PENDING, categories=["ai-news"],
             consent=Consent(ConsentMethod.FORM))
    summary = import_csv(subs, DATA / "mailchimp_subscribed.csv")
    assert summary.updated == 1
    ana = subs.get("ana.lopez@example.com")
    assert ana.status == Status.ACTIVE and ana.categories == ("ai-news", "essays")
    assert ana.name == "Ana López"


def test_dry_run_changes_nothing(subs):
    subs.add("tom.becker@example.com", consent=Consent(ConsentMethod.CLI))
    before = snapshot(subs)
    summary = import_csv(subs, DATA / "mailchimp_unsubscribed.csv", dry_run=True)
    assert summary.added == {"unsubscribed": 2} and summary.updated == 1
    assert snapshot(subs) == before
    assert summary.report_lines()[-1] == "dry run: nothing was changed"
    assert summary.report_lines()[1].startswith("would add 2")


def test_bad_files_are_one_line_errors(subs, tmp_path):
    with pytest.raises(SubscriberError, match="missing.csv: cannot read"):
        import_csv(subs, tmp_path / "missing.csv")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(SubscriberError, match="the file is empty"):
        import_csv(subs, empty)
    with pytest.raises(SubscriberError, match="does not look like a Substack"):
        import_csv(subs, DATA / "generic.csv", fmt="substack")
    with pytest.raises(SubscriberError, match="unknown category 'sports'"):
        import_csv(subs, DATA / "generic.csv", map_tags={"Essays": "sports"})


def test_semicolon_separated_file_from_a_spreadsheet(subs, tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufeffE-Mail;Name;Status\r\nana@example.com;Ana;active\r\nbo@example.com;Bo;"
                     "unsubscribed\r\ncy@example.com;Cy;weird\r\n".encode("utf-8"))
    summary = import_csv(subs, path)
    assert summary.added == {"active": 1, "unsubscribed": 1}
    assert summary.invalid == [(4, "unknown status 'weird'")]


def test_a_later_line_that_unsubscribes_wins(subs, tmp_path):
    path = tmp_path / "twice.csv"
    path.write_text("email,status\ny@example.com,active\nY@example.com,unsubscribed\nz@example.com,active\n"
                    "z@example.com,active\n")
    summary = import_csv(subs, path)
    assert subs.get("y@example.com").status == Status.UNSUBSCRIBED
    assert summary.added == {"unsubscribed": 1, "active": 1}
    assert summary.skipped == {"the same address is on an earlier line": 1}


def test_a_later_chunk_that_unsubscribes_wins(subs, tmp_path, monkeypatch):
    import newsletter.imports as imports

    monkeypatch.setattr(imports, "CHUNK", 2)
    path = tmp_path / "twice.csv"
    path.write_text("email,status\ny@example.com,active\nx@example.com,active\nY@example.com,unsubscribed\n")
    summary = import_csv(subs, path)
    assert subs.get("y@example.com").status == Status.UNSUBSCRIBED
    assert summary.added == {"active": 2} and summary.updated == 1


def test_windows_1252_file_and_tabs(subs, tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("email\tname\r\nana@example.com\tAna Mu\xf1oz\r\njose@example.com\tJos\xe9".encode("latin-1"))
    summary = import_csv(subs, path)
    assert summary.added == {"active": 2}
    assert subs.get("ana@example.com").name == "Ana Muñoz"
    assert subs.get("jose@example.com").name == "José"  # the file's last byte, cut off by no line break
    assert "not valid UTF-8, read as Windows-1252: lines 2, 3" in summary.report_lines()


def test_each_line_is_decoded_on_its_own(subs, tmp_path):
    path = tmp_path / "mixed.csv"
    path.write_bytes(b"\xef\xbb\xbfemail,name\n"
                     + "müller@example.de,Jürgen Müller\n".encode("utf-8")
                     + "jose@example.com,José – Excel\n".encode("cp1252")  # one line saved by Excel
                     + "zoë@exämple.se,Zoë “Z” Lindqvist\n".encode("utf-8"))
    summary = import_csv(subs, path)
    assert summary.added == {"active": 3} and summary.invalid == []
    assert subs.get("müller@example.de").name == "Jürgen Müller"  # not mã¼ller@example.de
    assert subs.get("mã¼ller@example.de") is None
    assert subs.get("jose@example.com").name == "José – Excel"
    assert subs.get("zoë@exämple.se").name == "Zoë “Z” Lindqvist"
    assert summary.decoding.lines == [3]
    assert "not valid UTF-8, read as Windows-1252: line 3" in summary.report_lines()


def test_quoted_fields_across_lines_and_old_line_endings(subs, tmp_path):
    path = tmp_path / "multi.csv"
    path.write_bytes(b'email;name;notes\r\n'
                     + 'ana@example.com;Ana;"first line\r\nsecond, Mu\xf1oz\r\nthird"\r\n'.encode("latin-1")
                     + 'müller@example.de;"Jürgen\r\nMüller";x\r\n'.encode("utf-8")
                     + b"bo@example.com;Bo;x\rcy@example.com;Cy;x\r")  # bare CRs, as old Mac files have
    summary = import_csv(subs, path)
    assert summary.added == {"active": 4} and summary.invalid == []
    assert subs.get("müller@example.de").name == "Jürgen Müller"  # the line break inside becomes a space
    assert subs.get("cy@example.com").name == "Cy"
    assert summary.decoding.lines == [3]


def test_many_lines_read_as_windows_1252_are_summarized(subs, tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes(b"email,name\n" + b"".join(f"r{i}@example.com,Ren\xe9 {i}\n".encode("latin-1")
                                                for i in range(25)))
    summary = import_csv(subs, path)
    assert summary.added == {"active": 25} and summary.decoding.count == 25
    assert "not valid UTF-8, read as Windows-1252: lines 2, 3, 4, 5, 6, 7, 8, 9, 10, 11 and 15 more" \
        in summary.report_lines()


def test_header_only_and_oversized_values(subs, tmp_path):
    path = tmp_path / "header.csv"
    path.write_text("email,name\n")
    summary = import_csv(subs, path)
    assert summary.added == {} and summary.invalid == []
    path.write_text("email,name,optin_ip\nlong@example.com," + "N" * 250 + ",not-an-ip\nok@example.com,Ok,1.2.3.4\n"
                    + "big@example.com," + "x" * 200_000 + "\nlast@example.com,Last\n")
    summary = import_csv(subs, path)
    assert subs.get("long@example.com").name == "N" * 200  # cut to what the database holds, everywhere
    assert subs.get("last@example.com") is not None
    assert [line for line, _ in summary.invalid] == [4] and "unreadable CSV" in summary.invalid[0][1]


# -- one way to become a reader -----------------------------------------------------------------

ROW_COLUMNS = ("name", "status", "confirmed_at", "unsubscribed_at", "consent_at", "consent_ip")


@pytest.mark.parametrize("status", list(Status))
def test_an_imported_reader_is_the_row_add_would_make(subs, tmp_path, status):
    """Import and `add` make a reader by the same rules: consent, timestamps, status, name."""
    name = "  Ana\u202e L\u00f3pez\x1b[31m " + "N" * 250
    path = tmp_path / "one.csv"
    path.write_text(f"email,name,status,created_at\nimported@example.com,{name},{status.value},"
                    "2024-05-06T07:08:09Z\n", encoding="utf-8")
    import_csv(subs, path)
    imported = subs.get("imported@example.com")
    added = subs.add("added@example.com", name=name, status=status,
                     consent=Consent(ConsentMethod.IMPORT, at=imported.consent_at))

    def row(reader):  # what the rules decide; the moment each was stored differs by a few ms
        return (reader.name, reader.status, reader.consent_at, reader.consent_method,
                reader.confirmed_at == reader.consent_at, reader.confirmed_at is None,
                reader.unsubscribed_at is None, reader.status_changed_at == reader.created_at)
    assert row(imported) == row(added)
    assert imported.name == ("Ana L\u00f3pez[31m " + "N" * 250)[:200]
    assert imported.consent_at == dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.timezone.utc)
    assert imported.confirmed_at == (imported.consent_at if status == Status.ACTIVE else None)
    assert (imported.unsubscribed_at is not None) == (status == Status.UNSUBSCRIBED)


def test_imported_readers_get_their_token_like_any_reader(subs, tmp_path, monkeypatch):
    path = tmp_path / "one.csv"
    path.write_text("email\nana@example.com\n")
    _fixed_urandom(monkeypatch, 5)
    expected = new_token()
    import_csv(subs, path)
    assert subs.get("ana@example.com").token == expected


def test_import_recognises_hashes_kept_before_the_key(subs):
    with subs.engine.begin() as conn:
        conn.execute(sa.insert(suppressions).values(email_hash=unkeyed_email_hash("alice.moreau@example.com"),
                                                    reason="forgotten", created_at=utcnow()))
    subs.add("ben.okafor@example.net", consent=Consent(ConsentMethod.FORM))
    subs.forget("ben.okafor@example.net")  # a keyed one beside it
    summary = import_csv(subs, DATA / "mailchimp_subscribed.csv")
    assert summary.skipped["forgotten at the reader's request"] == 2
    assert subs.get("alice.moreau@example.com") is None and subs.get("ben.okafor@example.net") is None


# -- a file of any size: the rules across chunks, a bounded summary -------------------------------

@pytest.mark.parametrize("dry_run", [False, True])
def test_the_same_address_in_different_chunks_counts_once(subs, tmp_path, dry_run):
    subs.add("left@example.com", consent=Consent(ConsentMethod.FORM))
    subs.change_status("left@example.com", Status.UNSUBSCRIBED)
    before = snapshot(subs)
    path = tmp_path / "chunks.csv"
    path.write_text("email,status\n"
                    "a@example.com,active\nleft@example.com,active\n"  # chunk 1
                    "b@example.com,pending\nA@Example.com,active\n"  # chunk 2: a again
                    "Left@example.com,active\nb@example.com,active\n"  # chunk 3: left and b again
                    "a@example.com,active\n")  # chunk 4: a a third time
    summary = import_csv(subs, path, chunk_size=2, dry_run=dry_run)
    assert summary.added == {"active": 1, "pending": 1} and summary.updated == 0
    assert summary.skipped == {"the same address is on an earlier line": 4,
                               "unsubscribed here: an import never makes them active again": 1}
    if dry_run:
        assert snapshot(subs) == before
    else:
        assert subs.get("b@example.com").status == Status.PENDING  # its first line counts
        assert [r.email for r in subs.iter_readers()].count("a@example.com") == 1
        assert import_csv(subs, path, chunk_size=2).skipped["the same address is on an earlier line"] == 4


def test_a_stop_in_a_later_chunk_is_remembered_in_the_chunks_after(subs, tmp_path):
    path = tmp_path / "stops.csv"
    path.write_text("email,status\ny@example.com,active\nx@example.com,active\n"  # chunk 1
                    "y@example.com,unsubscribed\nz@example.com,active\n"  # chunk 2: y leaves
                    "y@example.com,bounced\nY@example.com,active\n")  # chunk 3: y has already left
    summary = import_csv(subs, path, chunk_size=2)
    assert summary.added == {"active": 3} and summary.updated == 1 and summary.unchanged == 0
    assert summary.skipped == {"the same address is on an earlier line": 2}
    assert subs.get("y@example.com").status == Status.UNSUBSCRIBED


def test_an_import_leaves_no_table_behind(subs, tmp_path):
    path = tmp_path / "one.csv"
    path.write_text("email\nana@example.com\nana@example.com\n")
    for _ in range(2):  # the second import on the same pooled connection starts afresh
        assert import_csv(subs, path, chunk_size=1).skipped == {"the same address is on an earlier line": 1}
    assert "import_seen" not in sa.inspect(subs.engine).get_table_names()
    with subs.engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            temporary = conn.execute(sa.text("SELECT name FROM sqlite_temp_master")).scalars().all()
        else:
            temporary = conn.execute(sa.text("SELECT relname FROM pg_class WHERE relnamespace = pg_my_temp_schema()")).scalars().all()
    assert "import_seen" not in temporary


def test_more_bad_rows_than_the_summary_lists(subs, tmp_path):
    from newsletter.imports import INVALID_SHOWN

    bad = INVALID_SHOWN + 13
    path = tmp_path / "bad.csv"
    path.write_text("email,name\n" + "".join(f"reader{i}@example.com,Reader {i}\nbroken-{i},Broken\n"
                                             for i in range(bad)))
    summary = import_csv(subs, path, chunk_size=7)
    assert summary.added == {"active": bad} and subs.get(f"reader{bad - 1}@example.com") is not None
    assert summary.invalid_count == bad
    assert [line for line, _ in summary.invalid] == [3 + 2 * i for i in range(INVALID_SHOWN)]
    report = summary.report_lines()
    assert report[1] == f"added {bad} ({bad} active), updated 0, unchanged 0, skipped 0, invalid {bad}"
    assert report[2] == "invalid: line 3: invalid email address 'broken-0': An email address must have an @-sign."
    assert report[2 + INVALID_SHOWN] == "invalid: and 13 more lines"


def test_many_unmapped_tags_are_summarized(subs, tmp_path):
    from newsletter.imports import TAGS_COUNTED

    path = tmp_path / "tags.csv"
    path.write_text("email,tags\n" + "".join(f"r{i}@example.com,Common;T{i}\n" for i in range(TAGS_COUNTED + 5)))
    summary = import_csv(subs, path, chunk_size=100)
    assert len(summary.unmapped) == TAGS_COUNTED and summary.unmapped["Common"] == TAGS_COUNTED + 5
    assert summary.unmapped_uncounted == 6  # T999 ... T1004: the first thousand were Common and T0 ... T998
    line = next(line for line in summary.report_lines() if line.startswith("tags not mapped"))
    assert line.startswith(f"tags not mapped to a category: 'Common' ({TAGS_COUNTED + 5} rows), 'T0' (1 row), ")
    assert line.endswith(f" and over {TAGS_COUNTED - 10} more; map one with --map-tag 'TAG=slug'")


def test_lines_ending_in_bare_crs_are_read_a_block_at_a_time(monkeypatch):
    """`for line in file` splits on LF only: a file of bare CRs would be read whole, as one line."""
    import io

    import newsletter.imports as imports

    data = b"".join(b"r%d@example.com,Reader\r" % i for i in range(50_000))  # 1.3 MB
    f = io.BytesIO(data)
    lines = imports._physical_lines(f)
    assert next(lines) == b"r0@example.com,Reader\r"
    assert f.tell() <= imports.READ_BLOCK
    assert [b"r0@example.com,Reader\r", *lines] == data.splitlines(keepends=True)
    monkeypatch.setattr(imports, "READ_BLOCK", 3)  # a CRLF and a CR cut between blocks, lines longer than one
    mixed = b"a\r\nbb\rccc\n\r\r\ndddd\r\n\neeeee"
    assert list(imports._physical_lines(io.BytesIO(mixed))) == mixed.splitlines(keepends=True)
    assert list(imports._physical_lines(io.BytesIO(mixed))) == [
        b"a\r\n", b"bb\r", b"ccc\n", b"\r", b"\r\n", b"dddd\r\n", b"\n", b"eeeee"]


def test_memory_does_not_grow_with_the_file(subs, tmp_path):
    """Between chunks an import holds counts, not rows: what is still allocated after each chunk
    stays level from the second chunk to the last. (An address kept per row, as a set of those
    seen, or a reason kept per bad line, would add some 80 kB a chunk here.)"""
    import gc
    import tracemalloc

    rows = 4_000
    path = tmp_path / "many.csv"
    path.write_text("email,name,tags\n" + "".join(f"reader{i}@example.com,Reader {i},Essays\nbroken-{i},,\n"
                                                  for i in range(rows)))
    held = []

    def after_each_chunk(done: int, total: int) -> None:
        gc.collect()  # what is left is what the import holds on to
        held.append(tracemalloc.get_traced_memory()[0])

    tracemalloc.start()
    try:
        summary = import_csv(subs, path, chunk_size=500, progress=after_each_chunk)
    finally:
        tracemalloc.stop()
    assert summary.added == {"active": rows} and summary.invalid_count == rows and len(held) == 16
    assert max(held[1:]) - held[1] < 100_000, [h - held[1] for h in held]
