"""Signup with double opt-in: the form, and the page the confirmation link opens.

    GET  /subscribe         the form (also embeddable: a writer may paste it into their own site)
    POST /subscribe         takes no form token, so that a form on another site can post here;
                            double opt-in, a honeypot field and rate limits protect it instead.
                            Every address gets the same "check your inbox" page, byte for byte,
                            so the form cannot tell who subscribes.
    GET  /confirm/SIGNED    changes nothing (mail scanners fetch every link): a page with a button
    POST /confirm/SIGNED    the button (with a form token): the reader becomes active

The work is done by `newsletter.signups`; this module only reads forms and picks pages.
"""

from __future__ import annotations

from flask import Blueprint, abort, current_app, render_template, request

from ..signups import Confirmation, Signups, State, looks_like_address
from . import context, page_for_error
from .security import client_ip, csrf_ok, masked

blueprint = Blueprint("signup", __name__)

HONEYPOT = "website"  # hidden from people (class `trap`, aria-hidden); bots fill it in
PROBLEMS = {  # a link that cannot confirm: (status, title)
    State.EXPIRED: (410, "This link has expired"),
    State.INVALID: (404, "This link does not work"),
    State.USED: (410, "This link was already used"),
    State.STALE: (410, "This link no longer works"),
    State.ACTIVE: (200, "You are already subscribed"),
}


def signups() -> Signups:
    """The app's one `Signups`, made on first use."""
    found = current_app.extensions.get("signups")
    if found is None:
        ctx = context()
        found = current_app.extensions["signups"] = Signups(ctx.subscribers, ctx.settings, ctx.key)
    return found


@blueprint.get("/subscribe")
def form():
    return form_page()


def form_page(error: str | None = None, status: int = 200):
    """The form; after an error, with what the visitor typed and chose."""
    typed = request.form if error else {}
    return render_template("subscribe.html", categories=context().settings.categories, error=error,
                           email=typed.get("email", "")[:254], name=typed.get("name", "")[:200],
                           chosen=set(request.form.getlist("category")) if error else set(),
                           some=typed.get("scope") == "some"), status


@blueprint.post("/subscribe")
def subscribe():
    if request.form.get(HONEYPOT):  # a bot: the same answer, nothing stored, nothing counted
        return sent_page()
    hit = signups().allow_request(client_ip())
    if not hit.allowed:
        return page_for_error(429), 429, {"Retry-After": str(hit.retry_after)}
    email = request.form.get("email", "").strip()
    if not looks_like_address(email):
        return form_page("Enter an email address, like name@example.com.", 400)
    known = context().settings.category_slugs
    chosen = [slug for slug in request.form.getlist("category") if slug in known]
    scope = request.form.get("scope")
    if scope == "all":
        chosen = []
    elif scope == "some" and not chosen:
        return form_page("Choose at least one topic, or every story.", 400)
    source = request.form.get("source") or request.headers.get("Referer") or request.headers.get("Origin")
    signups().sign_up(email, name=request.form.get("name"), categories=chosen, ip=client_ip(),
                      source=source)
    return sent_page()


def sent_page():
    """The one answer to a signup: nothing in it may depend on who signed up, or how it went."""
    return render_template("subscribe_sent.html")


@blueprint.get("/confirm/<signed>")
def confirm_page(signed: str):
    found = signups().check(signed)
    if found.state != State.READY:
        return problem(found)
    return no_store(render_template("confirm.html", signed=signed, name=found.name,
                                    address=masked(found.reader.email),
                                    topics=signups().topics(found.categories)))


@blueprint.post("/confirm/<signed>")
def confirm(signed: str):
    if not csrf_ok("confirm", signed):
        abort(400)
    done = signups().confirm(signed, ip=client_ip())
    if done.state != State.CONFIRMED:
        return problem(done)
    return no_store(render_template("confirmed.html", reader=done.reader, name=done.name,
                                    address=masked(done.reader.email),
                                    topics=signups().topics(done.categories)))


def problem(found: Confirmation):
    status, title = PROBLEMS[found.state]
    return no_store(render_template("confirm_problem.html", state=found.state.value, title=title), status)


def no_store(page: str, status: int = 200):
    """Confirmation pages carry a reader's link (the welcome page their preferences): never cached."""
    return page, status, {"Cache-Control": "no-store"}
