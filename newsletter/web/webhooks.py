"""`POST /webhooks/resend`: what Resend reports about each email after the send.

Resend signs every delivery the way Svix does: HMAC-SHA256 with the endpoint's secret
(`RESEND_WEBHOOK_SECRET`, `whsec_...`) over `svix-id.svix-timestamp.body`. The signature is checked
on the raw body before anything is parsed (`resend.Webhooks.verify`, which also refuses a
timestamp more than 5 minutes away); a missing, wrong or stale signature gets a 4xx and a log line
without the body. Resend delivers an event again until it is answered with a 2xx, so an event is
stored under its `svix-id` once, and a second delivery answers 200 and changes nothing
(`reports.py`). A database that does not answer gets a 503: Resend tries again later.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import logging
import os
import time

import resend
from flask import Blueprint, Response, jsonify, request

from ..reports import RESEND_KINDS, Report, Reports
from . import context

log = logging.getLogger("newsletter.web")
blueprint = Blueprint("webhooks", __name__)
SECRET_VAR = "RESEND_WEBHOOK_SECRET"
PATH = "/webhooks/resend"


def secret_from_environment() -> str | None:
    return os.environ.get(SECRET_VAR, "").strip() or None


def sign(secret: str, svix_id: str, body: str, timestamp: int | None = None) -> dict[str, str]:
    """The headers Svix sends with `body`: its signature of `id.timestamp.body` with `secret`."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{svix_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return {"svix-id": svix_id, "svix-timestamp": str(timestamp),
            "svix-signature": "v1," + base64.b64encode(digest).decode()}


@blueprint.post(PATH)
def resend_webhook() -> Response:
    secret = secret_from_environment()
    if not secret:
        log.warning("webhook refused: $%s is not set, so no signature can be checked", SECRET_VAR)
        return _answer(503, "webhooks are not set up on this server")
    headers = {name: request.headers.get(f"svix-{name}", "") for name in ("id", "timestamp", "signature")}
    missing = [f"svix-{name}" for name, value in headers.items() if not value]
    if missing:
        log.warning("webhook refused: no %s header", missing[0])
        return _answer(400, f"missing {missing[0]} header")
    try:
        body = request.get_data(cache=False).decode("utf-8")
    except UnicodeDecodeError:
        log.warning("webhook refused: the body is not UTF-8 (svix-id %s)", headers["id"][:100])
        return _answer(400, "the body is not UTF-8")
    try:
        payload = resend.Webhooks.verify({"payload": body, "headers": headers, "webhook_secret": secret})
    except ValueError as e:
        reason = str(e).split(":")[0] if str(e).startswith("failed to parse") else str(e)
        log.warning("webhook refused: %s (svix-id %s)", reason, headers["id"][:100])
        return _answer(400 if reason.startswith("failed to parse") else 401, "signature refused")
    if not isinstance(payload, dict):
        log.warning("webhook refused: the event is not a JSON object (svix-id %s)", headers["id"][:100])
        return _answer(400, "the event is not a JSON object")
    report = report_of(headers["id"], payload)
    settings = context().settings
    done = Reports(context().subscribers.engine, soft_bounce_limit=settings.soft_bounce_limit).record(report)
    if not done.stored:
        log.info("webhook %s (%s) was handled before", headers["id"][:100], report.kind)
    elif done.new_status is not None:
        log.info("webhook %s: reader %d is %s", report.kind, done.reader_id, done.new_status.value)
    return _answer(200, "ok")


def report_of(svix_id: str, payload: dict) -> Report:
    """The report a verified Resend event makes; any shape of event is kept, matched or not."""
    kind = str(payload.get("type") or "unknown")
    data = payload.get("data") if isinstance(payload.get("data"), dict) else {}
    bounce = data.get("bounce") if isinstance(data.get("bounce"), dict) else {}
    click = data.get("click") if isinstance(data.get("click"), dict) else {}
    failed = data.get("failed") if isinstance(data.get("failed"), dict) else {}
    suppressed = data.get("suppressed") if isinstance(data.get("suppressed"), dict) else {}
    detail = None
    bounce_type = None
    if bounce:
        bounce_type = {"permanent": "permanent", "transient": "transient"}.get(
            str(bounce.get("type", "")).lower(), "undetermined")
        detail = " ".join(str(part) for part in (bounce.get("subType"), bounce.get("message")) if part)
    elif failed:
        detail = str(failed.get("reason") or "") or None
    elif suppressed:
        detail = " ".join(str(part) for part in (suppressed.get("type"), suppressed.get("message")) if part)
    # Matched by Resend's email id only: the same account may send other mail to the same address.
    return Report(
        source="resend", report_id=svix_id, kind=RESEND_KINDS.get(kind, kind),
        message_id=str(data["email_id"]) if data.get("email_id") else None,
        occurred_at=_time(payload.get("created_at")) or _time(data.get("created_at")),
        bounce_type=bounce_type, detail=detail or None,
        link=str(click["link"]) if click.get("link") else None,
    )


def _time(value) -> dt.datetime | None:
    """An ISO 8601 time as Resend writes it ("2026-11-25T08:00:00.123Z"), in UTC; None if not one."""
    if not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace(" ", "T", 1))
    except ValueError:
        return None
    return parsed.astimezone(dt.timezone.utc) if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def _answer(status: int, message: str) -> tuple[Response, int]:
    return jsonify({"ok": status == 200, "message": message}), status
