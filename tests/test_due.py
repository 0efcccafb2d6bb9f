"""Which digests a scheduled send picks: ready, dated today or before, not sent, oldest first."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import yaml

from newsletter.due import find_due
from newsletter.ledger import Ledger, RunStatus

from .conftest import EXAMPLE

TODAY = dt.date(2026, 11, 30)


def issue(folder, name: str, *, status: str | None, date: str | None, body: str | None = None) -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    lines = [line for line in text.split("\n") if not line.startswith(("date:", "status:"))]
    extra = ([f"status: {status}"] if status is not None else []) + ([f"date: {date}"] if date else [])
    lines[1:1] = extra
    text = "\n".join(lines)
    if body is not None:
        text += body
    (folder / f"{name}.md").write_text(text, encoding="utf-8")


@pytest.fixture
def folder(tmp_path, settings):
    digests = tmp_path / "digests"
    digests.mkdir()
    return digests, settings.with_overrides(digests_dir=digests)


def test_only_ready_digests_whose_date_has_come_are_due_oldest_first(folder, subs):
    digests, settings = folder
    issue(digests, "b-ready-today", status="ready", date="2026-11-30")
    issue(digests, "a-ready-last-week", status="ready", date="2026-11-23")
    issue(digests, "c-draft", status="draft", date="2026-11-20")
    issue(digests, "d-no-status", status=None, date="2026-11-20")
    issue(digests, "e-next-week", status="ready", date="2026-12-07")
    issue(digests, "f-ready-undated", status="'Ready'", date=None)
    found = find_due(settings, Ledger(subs.engine), TODAY)
    assert [d.slug for d in found.due] == ["f-ready-undated", "a-ready-last-week", "b-ready-today"]
    assert found.not_yet == ["e-next-week"] and found.failed == [] and found.unfinished == []
    assert all(d.status == "ready" for d in found.due)


def test_a_ready_digest_that_fails_its_checks_is_reported_and_the_others_still_go(folder, subs):
    digests, settings = folder
    issue(digests, "broken", status="ready", date="2026-11-23", body="\nSee [^missing-note].\n")
    issue(digests, "fine", status="ready", date="2026-11-24")
    issue(digests, "misspelt", status="redy", date="2026-11-24")
    (digests / "no-front-matter.md").write_text("# just text\n", encoding="utf-8")
    (digests / "draft-broken.md").write_text("---\ntitle: x\nstatus: draft\n---\nSee [^nope].\n")
    found = find_due(settings, Ledger(subs.engine), TODAY)
    assert [d.slug for d in found.due] == ["fine"]
    failed = sorted(str(p) for p in found.failed)
    assert len(failed) == 3, failed
    assert any("broken.md:" in p and "missing-note" in p for p in failed)
    assert any("misspelt.md:" in p and "'status' must be draft or ready" in p for p in failed)
    assert any("no-front-matter.md" in p for p in failed)


def test_sent_and_unfinished_issues_are_not_due_again(folder, subs):
    digests, settings = folder
    for name in ("sent", "open", "cancelled"):
        issue(digests, name, status="ready", date="2026-11-23")
    ledger = Ledger(subs.engine)
    for name, status in (("sent", RunStatus.FINISHED), ("open", RunStatus.PAUSED),
                         ("cancelled", RunStatus.CANCELLED)):
        run = ledger.create_run(issue=name, digest_path=str(digests / f"{name}.md"), digest_sha256="0" * 64,
                                settings_sha256="0" * 64, subject="s", provider="outbox", recipients=[])
        ledger.set_status(run.id, status)
    found = find_due(settings, ledger, TODAY)
    assert [d.slug for d in found.due] == ["cancelled"]  # a cancelled run sent it to nobody for sure
    assert found.unfinished == ["open"]


def test_status_is_checked_like_any_front_matter_value(write_digest, settings, run):
    from newsletter.digest import load_digest
    from newsletter.errors import DigestError

    good = write_digest("---\ntitle: T\nstatus: ready\n---\n## A story\nText.\n")
    assert load_digest(good, settings).status == "ready"
    bad = write_digest("---\ntitle: T\nstatus: yes\n---\n## A story\nText.\n", name="bad.md")
    with pytest.raises(DigestError, match=r"bad.md:3: 'status' must be draft or ready"):
        load_digest(bad, settings)


def test_a_due_digest_reads_its_file_and_front_matter_once(folder, subs, monkeypatch):
    digests, settings = folder
    issue(digests, "a-ready", status="ready", date="2026-11-23")
    issue(digests, "b-draft", status="draft", date="2026-11-23")
    loaders, reads = [], []
    make_loader, read_text = yaml.CSafeLoader.__init__, Path.read_text

    def counted_loader(self, stream):
        loaders.append(stream)
        make_loader(self, stream)

    def counted_read(self, *args, **kwargs):
        reads.append(self.name)
        return read_text(self, *args, **kwargs)
    monkeypatch.setattr(yaml.CSafeLoader, "__init__", counted_loader)
    monkeypatch.setattr(Path, "read_text", counted_read)
    found = find_due(settings, Ledger(subs.engine), TODAY)
    assert [d.slug for d in found.due] == ["a-ready"]
    assert len(loaders) == 2 and sorted(reads) == ["a-ready.md", "b-draft.md"]  # once per file
