"""The links in every email: `/u/TOKEN` (unsubscribe) and `/p/TOKEN` (preferences).

    GET  /u/TOKEN         changes nothing (scanners and link previews fetch every link): a page
                          with one button that unsubscribes
    POST /u/TOKEN         `List-Unsubscribe=One-Click` (RFC 8058, what Gmail and Yahoo send):
                          unsubscribes at once, no form token; else the page's button (form token)
    POST /u/TOKEN/undo    "I changed my mind", from the page that confirmed the unsubscribe
    GET/POST /p/TOKEN     the preferences centre

An unknown, rotated or forged token gets the app's one 404 page. Log lines name the reader's id,
never the token or the address.
"""

from __future__ import annotations

import logging

from flask import Blueprint, abort, redirect, render_template, request, url_for

from ..errors import SubscriberError
from ..subscribers import Consent, ConsentMethod, Reader, Status
from ..links import PATHS
from . import context
from .security import client_ip, csrf_ok, masked, signed

log = logging.getLogger("newsletter.web")
blueprint = Blueprint("readers", __name__)
UNSUBSCRIBE = f"/{PATHS['unsubscribe']}/<token>"  # the link scheme is links.py's
PREFERENCES_PATH = f"/{PATHS['preferences']}/<token>"

ONE_CLICK = "one-click unsubscribe"
PAGE = "unsubscribe page"
PREFERENCES = "preferences page"
UNDO = "changed their mind"
BY_READER = frozenset({ONE_CLICK, PAGE, PREFERENCES})  # unsubscribes a reader may undo
UNDO_SECONDS = 24 * 3600
NOTICES = {"saved": "Your preferences are saved.", "unsubscribed": "You are unsubscribed.",
           "resubscribed": "Welcome back: you are subscribed again.",
           "choose": "Choose at least one topic, or every story."}


def reader_or_404(token: str) -> Reader:
    reader = context().subscribers.by_token(token)
    if reader is None:
        abort(404)
    return reader


def unsubscribe(reader: Reader, reason: str) -> Reader:
    """Stop the reader's mail now: a run in progress skips them from its next batch."""
    if reader.status not in (Status.ACTIVE, Status.PENDING):
        return reader  # unsubscribed already, or stopped by a bounce or complaint
    reader = context().subscribers.change_status(reader.email, Status.UNSUBSCRIBED, reason=reason,
                                                 ip=client_ip())
    log.info("reader %d unsubscribed (%s)", reader.id, reason)
    return reader


def may_come_back(reader: Reader) -> bool:
    """A reader who unsubscribed themselves may resubscribe from their own links; one stopped by
    the writer, a bounce or a complaint signs up again (double opt-in)."""
    if reader.status != Status.UNSUBSCRIBED:
        return False
    last = context().subscribers.last_status_event(reader.id) or {}
    return last.get("reason") in BY_READER


def come_back(reader: Reader, source: str) -> Reader:
    reader = context().subscribers.change_status(
        reader.email, Status.ACTIVE, reason=UNDO, ip=client_ip(),
        consent=Consent(ConsentMethod.FORM, source=source, ip=client_ip()))
    log.info("reader %d resubscribed (%s)", reader.id, source)
    return reader


def one_click_page() -> str:
    """The same for every reader: rendered once (mailbox providers may call it by the thousand)."""
    ctx = context()
    if ctx.one_click_page is None:
        ctx.one_click_page = render_template("one_click.html")
    return ctx.one_click_page


@blueprint.get(UNSUBSCRIBE)
def unsubscribe_page(token: str):
    reader = reader_or_404(token)
    return render_template("unsubscribe.html", reader=reader, token=token, address=masked(reader.email))


@blueprint.post(UNSUBSCRIBE)
def unsubscribe_post(token: str):
    if request.form.get("List-Unsubscribe") == "One-Click":  # RFC 8058: no cookie, no form token
        done = context().subscribers.unsubscribe_by_token(token, reason=ONE_CLICK, ip=client_ip())
        if done is None:
            abort(404)
        if done[1]:
            log.info("reader %d unsubscribed (%s)", done[0], ONE_CLICK)
        return one_click_page(), 200
    reader = reader_or_404(token)
    if not csrf_ok("unsubscribe", token):
        abort(400)
    before = reader.status
    reader = unsubscribe(reader, PAGE)
    undo = None
    if reader.status == Status.UNSUBSCRIBED and before != reader.status:
        undo = signed("undo", [reader.id, reader.status_changed_at.isoformat()])
    return render_template("unsubscribed.html", reader=reader, token=token, undo=undo,
                           address=masked(reader.email))


@blueprint.post(UNSUBSCRIBE + "/undo")
def undo_unsubscribe(token: str):
    reader = reader_or_404(token)
    if not csrf_ok("undo", token):
        abort(400)
    got = signed("undo", None, max_age=UNDO_SECONDS, token=request.form.get("undo", "")[:512])
    if got == [reader.id, reader.status_changed_at.isoformat()] and reader.status == Status.UNSUBSCRIBED:
        come_back(reader, "unsubscribe page")
        return redirect(url_for("readers.preferences", token=token, done="resubscribed"), 303)
    # Too late, or something changed since: the preferences page says what is possible now.
    return redirect(url_for("readers.preferences", token=token), 303)


@blueprint.get(PREFERENCES_PATH)
def preferences(token: str):
    reader = reader_or_404(token)
    return preferences_page(reader, token, NOTICES.get(request.args.get("done", "")))


def preferences_page(reader: Reader, token: str, notice: str | None = None, status: int = 200):
    settings = context().settings
    return render_template("preferences.html", reader=reader, token=token, address=masked(reader.email),
                           categories=settings.categories, chosen=set(reader.categories),
                           can_return=may_come_back(reader), notice=notice), status


@blueprint.post(PREFERENCES_PATH)
def preferences_post(token: str):
    reader = reader_or_404(token)
    if not csrf_ok("preferences", token):
        abort(400)
    action = request.form.get("action", "save")
    done = None
    if action == "unsubscribe":
        unsubscribe(reader, PREFERENCES)
        done = "unsubscribed"
    elif action == "resubscribe" and may_come_back(reader):
        come_back(reader, "preferences page")
        done = "resubscribed"
    elif action == "save" and reader.status in (Status.ACTIVE, Status.PENDING):
        known = context().settings.category_slugs
        chosen = [slug for slug in request.form.getlist("category") if slug in known]
        if request.form.get("scope") == "all":
            chosen = []
        elif not chosen:
            return preferences_page(reader, token, NOTICES["choose"], 400)
        try:
            context().subscribers.set_categories(reader.email, chosen, ip=client_ip(), reason=PREFERENCES)
        except SubscriberError:
            abort(400)
        log.info("reader %d changed their categories", reader.id)
        done = "saved"
    return redirect(url_for("readers.preferences", token=token, done=done), 303)
