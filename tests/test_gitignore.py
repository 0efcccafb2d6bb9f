"""What `newsletter` writes beside the settings never lands in git: readers' data and secrets."""

import shutil
import subprocess

import pytest

from .conftest import ROOT

WRITTEN = [
    "outbox/r1-1-ana_example.com-0a1b2c3d.eml",  # the default outbox_dir: each file holds a reader's links
    "elsewhere/r1-2-bo_example.com-0a1b2c3d.eml",  # an outbox_dir set to any other folder
    "out/demo/outbox/r1-1-ana_example.com-0a1b2c3d.eml",  # scripts/demo.sh
    "out/demo/subscribers.db", "out/2026-04-22-open-models-weekly.html",  # demo, preview
    "build/screenshots/email-desktop.png",  # the browser tests
    "subscribers.db", "subscribers.db-journal", "subscribers.db-wal", "newsletter.key",
]


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a git checkout")
def test_readers_data_and_secrets_are_ignored():
    result = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], cwd=ROOT, input="\n".join(WRITTEN),
                            capture_output=True, text=True, timeout=30)
    assert result.stdout.split() == WRITTEN
    kept = subprocess.run(["git", "check-ignore", "--no-index", "newsletter/providers/outbox.py",
                           "tests/fake_resend.py"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert kept.stdout == "", "source files are not ignored"
