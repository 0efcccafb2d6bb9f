"""End to end: real sends to the fake Resend server, whose signed events reach a real
`newsletter serve` process (newsletter/web/webhooks.py)."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter

import requests
import sqlalchemy as sa

from newsletter.store import deliveries, reports, send_runs
from newsletter.subscribers import Status, Subscribers

from .conftest import EXAMPLE, ROOT, TEST_KEY, Server
from .fake_resend import svix_headers
from .test_web_e2e import add_readers
from .test_webhooks import PATH, SECRET, bounce, event

COMMAND = [sys.executable, "-m", "newsletter"]


def environment(db_url: str, tmp_path, fake) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEWSLETTER_", "RESEND_"))}
    return dict(env, NEWSLETTER_CONFIG=str(ROOT / "newsletter.toml"), NEWSLETTER_DATABASE_URL=db_url,
                NEWSLETTER_SECRET_KEY=TEST_KEY, NEWSLETTER_OUTBOX_DIR=str(tmp_path / "outbox"),
                NEWSLETTER_PROVIDER="resend", RESEND_API_KEY=fake.state.api_key, RESEND_API_URL=fake.url,
                RESEND_WEBHOOK_SECRET=SECRET)


def earlier_delivery(subs: Subscribers, email: str) -> str:
    """A delivery of an earlier issue to `email`, with Resend's id for it."""
    now = dt.datetime.now(dt.timezone.utc)
    message_id = f"re_{uuid.uuid4().hex}"
    with subs.engine.begin() as conn:
        run_id = conn.execute(sa.insert(send_runs).values(
            issue="2026-11-18-earlier.md", digest_path="2026-11-18-earlier.md", digest_sha256="0" * 64,
            subject="Earlier", provider="resend", status="finished", created_at=now, updated_at=now,
            finished_at=now)).inserted_primary_key[0]
        conn.execute(sa.insert(deliveries).values(run_id=run_id, reader_id=subs.require(email).id, variant="",
                                                  state="sent", message_id=message_id, attempts=1, updated_at=now))
    return message_id


def signed_post(url: str, payload: dict) -> int:
    body = json.dumps(payload)
    return requests.post(url, data=body.encode(), timeout=30,
                         headers={"content-type": "application/json",
                                  **svix_headers(SECRET, f"msg_{uuid.uuid4().hex}", body)}).status_code


def test_a_bounce_or_complaint_during_a_send_stops_that_readers_copy(db_url, session_settings, tmp_path, fake_resend):
    readers = [f"r{i:03d}@example.com" for i in range(60)]
    add_readers(db_url, session_settings, readers)
    subs = Subscribers.open(db_url, session_settings.categories)
    bounced, complained = readers[-1], readers[-2]
    earlier = {email: earlier_delivery(subs, email) for email in (bounced, complained)}
    env = environment(db_url, tmp_path, fake_resend)
    server = Server(env)
    try:
        sending = subprocess.Popen([*COMMAND, "send", str(EXAMPLE), "--yes"], env=dict(
            env, NEWSLETTER_BASE_URL=server.url, NEWSLETTER_SEND_RATE="4", NEWSLETTER_BATCH_SIZE="5"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while sum(fake_resend.addresses().values()) < 10:  # the run is under way
            assert sending.poll() is None, sending.stderr.read()
            assert time.monotonic() < deadline, "no deliveries after 60 s"
            time.sleep(0.05)  # the fake server counts; there is no event to wait on
        assert fake_resend.addresses()[bounced] == fake_resend.addresses()[complained] == 0
        assert signed_post(server.url + PATH, bounce(earlier[bounced])) == 200
        assert signed_post(server.url + PATH, event("email.complained", earlier[complained])) == 200
        out, err = sending.communicate(timeout=120)
        assert sending.returncode == 0, err
    finally:
        server.stop()
    assert fake_resend.addresses() == Counter({email: 1 for email in readers[:-2]})
    assert subs.require(bounced).status == Status.BOUNCED
    assert subs.require(complained).status == Status.COMPLAINED
    assert "skipped 2" in out
    subs.close()


def test_events_about_a_real_send_reach_a_real_server(db_url, session_settings, tmp_path, fake_resend):
    readers = [f"r{i}@example.com" for i in range(8)]
    add_readers(db_url, session_settings, readers)
    env = environment(db_url, tmp_path, fake_resend)
    sent = subprocess.run([*COMMAND, "send", str(EXAMPLE), "--yes"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert sent.returncode == 0, sent.stderr
    kinds = {readers[0]: ["email.sent", "email.delivered", "email.opened", "email.clicked", "email.clicked"],
             readers[1]: ["email.sent", "email.delivered", "email.opened"],
             readers[2]: ["email.sent", "email.delivered"],
             readers[3]: ["email.sent", "email.bounced"],
             readers[4]: ["email.sent", "email.bounced.transient"]}
    server = Server(env)
    try:
        answers = fake_resend.post_events(server.url + PATH, SECRET, kinds)
    finally:
        server.stop()
    assert answers == [200] * sum(map(len, kinds.values()))
    subs = Subscribers.open(db_url, session_settings.categories)
    with subs.engine.connect() as conn:
        rows = conn.execute(sa.select(reports.c.kind, reports.c.delivery_id, reports.c.link)).all()
    assert Counter(kind for kind, _, _ in rows) == Counter(
        {"sent": 5, "delivered": 3, "opened": 2, "clicked": 2, "bounced": 2})
    assert all(delivery_id is not None for _, delivery_id, _ in rows), "every event matched its delivery"
    assert all(link.startswith("https://") for kind, _, link in rows if kind == "clicked")
    assert subs.require(readers[3]).status == Status.BOUNCED
    assert subs.require(readers[4]).status == Status.ACTIVE  # one transient bounce: counted only
    subs.close()
    shown = subprocess.run([*COMMAND, "stats", EXAMPLE.name, "--format", "json"], env=env, capture_output=True,
                           text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    figures = json.loads(shown.stdout)
    assert {k: figures[k] for k in ("sent", "delivered", "opened", "clicked", "bounced_hard", "bounced_soft",
                                    "complained")} == {
        "sent": 8, "delivered": 3, "opened": 2, "clicked": 1, "bounced_hard": 1, "bounced_soft": 1, "complained": 0}
    assert figures["click_rate"] == 1 / 3 and figures["delivered_rate"] == 3 / 8
    [top] = figures["top_links"]
    assert top["clicks"] == 1 and top["link"].startswith("https://")
    table = subprocess.run([*COMMAND, "stats", EXAMPLE.name], env=env, capture_output=True, text=True, timeout=120)
    assert table.returncode == 0 and "opens (approximate)" in table.stdout, table.stderr
