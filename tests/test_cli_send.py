"""`newsletter send`, `runs` and `resume` as a user runs them."""

from __future__ import annotations

import io
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from email import message_from_bytes, policy

import pytest

from newsletter.subscribers import Consent, ConsentMethod, Subscribers

from .conftest import EXAMPLE, ROOT, TEST_KEY


@pytest.fixture
def cli(run, monkeypatch, db_url, session_settings, tmp_path):
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", db_url)
    monkeypatch.setenv("NEWSLETTER_OUTBOX_DIR", str(tmp_path / "outbox"))
    subs = Subscribers.open(db_url, session_settings.categories)
    for i, cats in enumerate([(), ("ai-tech",), ("essays",), ("ai-tech",), ()]):
        subs.add(f"r{i}@example.com", categories=cats, consent=Consent(ConsentMethod.CLI))
    subs.close()
    return run


def eml(tmp_path):
    return sorted(p.name for p in (tmp_path / "outbox").glob("*.eml")) if (tmp_path / "outbox").exists() else []


def test_send_to_the_outbox(cli, tmp_path):
    result = cli("send", EXAMPLE, "--yes")
    assert result.code == 0, result.err
    assert "no provider configured: writing .eml files to" in result.err
    assert "provider: outbox" in result.out and re.search(r"total\s+5\b", result.out)
    assert "run 1: sent 5, failed 0, skipped 0, queued 0" in result.out
    assert len(eml(tmp_path)) == 5
    listed = cli("runs").out
    assert "2026-04-22-open-models-weekly" in listed and "finished" in listed
    again = cli("send", EXAMPLE, "--yes")
    assert again.code == 1 and "was already sent (run 1" in again.err and "--again" in again.err
    assert len(eml(tmp_path)) == 5
    assert cli("send", EXAMPLE, "--yes", "--again").code == 0
    assert len(eml(tmp_path)) == 10


def test_the_longest_and_oddest_addresses_get_their_file(cli, tmp_path, db_url, session_settings):
    """A valid address may be 254 characters, and hold `/`, `|`, `?` or `*`: each reader still
    gets one file in the outbox, and no file lands anywhere else."""
    longest = "l" * 64 + "@" + "d" * 63 + "." + "e" * 63 + "." + "f" * 57 + ".com"
    odd = ["a/b@example.com", "a_b@example.com", "x|y*z?@example.com", "{~}=&'!#$%^`@example.com"]
    subs = Subscribers.open(db_url, session_settings.categories)
    for email in [longest, *odd]:
        subs.add(email, consent=Consent(ConsentMethod.CLI))
    assert subs.get(longest).email == longest  # accepted as it is
    subs.close()
    result = cli("send", EXAMPLE, "--yes")
    assert result.code == 0, result.err
    assert "run 1: sent 10, failed 0, skipped 0, queued 0" in result.out
    outbox = tmp_path / "outbox"
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix == ".eml"]
    assert all(p.parent == outbox for p in files), files
    recipients = Counter(message_from_bytes(p.read_bytes(), policy=policy.default)["To"] for p in files)
    assert recipients == Counter({e: 1 for e in [longest, *odd, *(f"r{i}@example.com" for i in range(5))]})


def test_dry_run_and_test_copies_touch_no_reader(cli, tmp_path):
    result = cli("send", EXAMPLE, "--dry-run")
    assert result.code == 0 and "dry run: nothing was sent" in result.out
    assert "rendered all:" in result.out and "rendered ai-tech:" in result.out
    assert eml(tmp_path) == []
    result = cli("send", EXAMPLE, "--test", "me@example.org", "--test", "you@example.org")
    assert result.code == 0, result.err
    files = eml(tmp_path)
    assert len(files) == 6  # three variants, two addresses
    assert all("me@example.org" in f or "you@example.org" in f for f in files)
    assert "test copy ai-tech to me@example.org: sent" in result.out
    assert "2026-04-22" not in cli("runs").out, "test copies are not a run"


@pytest.mark.parametrize("env, message", [
    ({"NEWSLETTER_PROVIDER": "resend"}, "error: provider is resend but $RESEND_API_KEY is not set"),
    ({"NEWSLETTER_PROVIDER": "smtp", "NEWSLETTER_SMTP_HOST": " "}, "error: provider is smtp but smtp_host is empty"),
    ({"NEWSLETTER_PROVIDER": "smtp", "NEWSLETTER_SMTP_USERNAME": "news"},
     "error: smtp_username is set but $NEWSLETTER_SMTP_PASSWORD is not set"),
    ({"NEWSLETTER_PROVIDER": "smtp", "NEWSLETTER_SMTP_PASSWORD": "secret-pw"},
     "error: $NEWSLETTER_SMTP_PASSWORD is set but smtp_username is not: the password would never be used"),
])
def test_provider_settings_are_checked_by_a_dry_run_and_before_the_question(cli, tmp_path, monkeypatch,
                                                                           env, message):
    monkeypatch.delenv("RESEND_API_KEY", raising=False)
    monkeypatch.delenv("NEWSLETTER_SMTP_PASSWORD", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = cli("send", EXAMPLE, "--dry-run")
    assert (result.code, result.err) == (1, message + "\n")
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
    result = cli("send", EXAMPLE)
    assert (result.code, result.err) == (1, message + "\n") and "Send \"" not in result.out
    assert "secret-pw" not in result.out + result.err
    assert "2026-04-22" not in cli("runs").out, "no run was opened"


def test_send_asks_first(cli, tmp_path, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("n\n"))
    result = cli("send", EXAMPLE)
    assert result.code == 1 and "Send \"Lemma-7B" in result.out and "aborted" in result.err
    assert eml(tmp_path) == []


def test_resume_refuses_what_it_cannot_do(cli):
    assert cli("resume", "99", "--yes").err.strip() == "error: there is no send run 99 (see `newsletter runs`)"
    cli("send", EXAMPLE, "--yes")
    result = cli("resume", "1", "--yes")
    assert result.code == 1 and "run 1 is finished" in result.err


COMMAND = [sys.executable, "-m", "newsletter"]


def real_send(db_url, fake, settings, readers: list[str], rate: int) -> tuple[dict, subprocess.Popen]:
    """Readers in the database, and `newsletter send --yes` running in a process of its own."""
    subs = Subscribers.open(db_url, settings.categories)
    for i, email in enumerate(readers):
        subs.add(email, categories=[("ai-tech",), ("essays",), ()][i % 3], consent=Consent(ConsentMethod.CLI))
    subs.close()
    env = dict(os.environ, NEWSLETTER_CONFIG=str(ROOT / "newsletter.toml"), NEWSLETTER_DATABASE_URL=db_url,
               NEWSLETTER_SECRET_KEY=TEST_KEY, NEWSLETTER_PROVIDER="resend", NEWSLETTER_SEND_RATE=str(rate), NEWSLETTER_BATCH_SIZE="5",
               RESEND_API_KEY=fake.state.api_key, RESEND_API_URL=fake.url)
    process = subprocess.Popen([*COMMAND, "send", str(EXAMPLE), "--yes"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    return env, process


def delivered_at_least(fake, count: int, process: subprocess.Popen, seconds: float = 60.0) -> None:
    """Wait until the fake server has delivered `count` emails; fail at the deadline, or if the
    send ended before."""
    deadline = time.monotonic() + seconds
    while sum(fake.addresses().values()) < count:
        if process.poll() is not None:
            pytest.fail(f"the send ended (exit {process.returncode}) before {count} deliveries: "
                        f"{process.stderr.read()}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"fewer than {count} deliveries after {seconds:.0f} s")
        time.sleep(0.05)  # the fake server counts; there is no event to wait on


def test_killed_mid_send_then_resumed_delivers_exactly_once(db_url, fake_resend, session_settings, tmp_path):
    """The real thing: SIGKILL in the middle of a send, then `newsletter resume`."""
    readers = [f"k{i:03d}@example.com" for i in range(120)]
    env, process = real_send(db_url, fake_resend, session_settings, readers, rate=8)
    delivered_at_least(fake_resend, 30, process)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    delivered = sum(fake_resend.addresses().values())
    assert 30 <= delivered < len(readers)

    result = subprocess.run([*COMMAND, "resume", "1", "--yes"], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "run 1 finished" in result.stdout
    assert fake_resend.addresses() == Counter({email: 1 for email in readers})


def test_ctrl_c_pauses_and_resume_finishes(db_url, fake_resend, session_settings):
    readers = [f"c{i:03d}@example.com" for i in range(60)]
    env, process = real_send(db_url, fake_resend, session_settings, readers, rate=4)
    delivered_at_least(fake_resend, 10, process)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    assert "pausing after the batch in flight" in err and "Resume with `newsletter resume 1`" in err
    assert "Traceback" not in err
    assert sum(fake_resend.addresses().values()) < len(readers)
    listed = subprocess.run([*COMMAND, "runs"], env=env, capture_output=True, text=True, timeout=60).stdout
    assert "paused" in listed
    result = subprocess.run([*COMMAND, "resume", "1", "--yes"], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert fake_resend.addresses() == Counter({email: 1 for email in readers})


def lines_of(stream) -> "queue.Queue[str]":
    """The lines a process writes to `stream`, as they come, to wait on with a deadline."""
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)  # the end of the stream
    threading.Thread(target=read, daemon=True).start()
    return lines


def rest_of(lines: "queue.Queue[str | None]", seconds: float = 30.0) -> str:
    """Everything up to the end of the stream (the process has ended)."""
    out = []
    deadline = time.monotonic() + seconds
    while (line := lines.get(timeout=max(0.0, deadline - time.monotonic()))) is not None:
        out.append(line)
    return "".join(out)


def wait_for_line(lines: "queue.Queue[str]", text: str, seconds: float = 30.0) -> list[str]:
    seen: list[str] = []
    deadline = time.monotonic() + seconds
    while not any(text in line for line in seen):
        try:
            seen.append(lines.get(timeout=max(0.0, deadline - time.monotonic())))
        except queue.Empty:
            pytest.fail(f"no {text!r} within {seconds:.0f} s; got {seen}")
    return seen


def test_a_second_ctrl_c_stops_at_once_and_says_how_to_resume(db_url, fake_resend, session_settings):
    readers = [f"s{i:03d}@example.com" for i in range(60)]
    env, process = real_send(db_url, fake_resend, session_settings, readers, rate=8)
    err = lines_of(process.stderr)
    delivered_at_least(fake_resend, 10, process)
    state = fake_resend.state
    with state.lock:  # the next request the server takes hangs for 8 s: a batch in flight
        arrived = len(state.arrivals)
        state.switches.delay, state.switches.delay_next = 8.0, 1
    deadline = time.monotonic() + 30
    while len(state.arrivals) == arrived:  # the fake server counts; there is no event to wait on
        assert time.monotonic() < deadline and process.poll() is None, "the send stopped sending"
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    seen = wait_for_line(err, "pausing after the batch in flight")
    started = time.monotonic()
    process.send_signal(signal.SIGINT)
    process.wait(timeout=30)
    assert time.monotonic() - started < 5, "the second Ctrl-C does not wait for the batch in flight"
    stderr = "".join(seen) + rest_of(err)
    assert process.returncode == 130, stderr
    assert "stopped at once: run 1 is not finished. Resume with `newsletter resume 1`" in stderr, stderr
    assert "Traceback" not in stderr
    assert sum(fake_resend.addresses().values()) < len(readers)
    result = subprocess.run([*COMMAND, "resume", "1", "--yes"], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "run 1 finished" in result.stdout
    assert fake_resend.addresses() == Counter({email: 1 for email in readers}), "each reader got it once"
