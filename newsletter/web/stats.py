"""The stats pages: how each issue did, for the writer only.

    GET /stats            every issue: delivered, opened, clicked and bounced bars per issue,
                          active readers per category week by week, and a table of every issue
    GET /stats/ISSUE      one issue's figures and its most clicked links

Login is HTTP Basic, user `admin` (or $NEWSLETTER_ADMIN_USER), checked against
$NEWSLETTER_ADMIN_PASSWORD_HASH (a werkzeug hash: `newsletter admin-password` makes one) or, if
only that is set, the password in $NEWSLETTER_ADMIN_PASSWORD (compared in constant time). With
neither, the pages answer 404 as if they did not exist, and `newsletter serve` says how to turn
them on. A wrong login answers 401; after FAILED_LOGINS failed logins from one IP address in an
hour, every login from it answers 429 until the hour is over (counted in the database, shared by
every server process, as the signup limits are).

Charts are SVG drawn by the templates (`_stats_charts.html`), styled by stats.css (the CSP allows
no inline style and no script): they work without JavaScript, in light and dark, and each one's
numbers are also in a table.
"""

from __future__ import annotations

import datetime as dt
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass

from flask import Blueprint, Response, abort, current_app, render_template, request
from werkzeug.security import check_password_hash

from ..config import Settings
from ..errors import ConfigError, IssueNotFound
from ..history import EVERY_STORY
from ..ratelimits import RateLimiter
from ..stats import LABELS, UNSUBSCRIBE_WINDOW, Figures, Stats, figures_record
from . import page_for_error
from .charts import bar_groups, line_chart
from .security import client_ip

blueprint = Blueprint("stats", __name__)
REALM = 'Basic realm="newsletter stats"'
FAILED_LOGINS = 10  # per IP address and hour
FAILED_LOGIN_WINDOW = dt.timedelta(hours=1)
CHARTED_ISSUES = 12  # the newest issues drawn as bars (the table has them all)
CHARTED_WEEKS = 26
HASH_METHODS = ("scrypt:", "pbkdf2:")  # what werkzeug's generate_password_hash writes
USER_VAR, HASH_VAR, PASSWORD_VAR = "NEWSLETTER_ADMIN_USER", "NEWSLETTER_ADMIN_PASSWORD_HASH", "NEWSLETTER_ADMIN_PASSWORD"
TURN_ON = (f"the /stats pages are off: set {HASH_VAR} (`newsletter admin-password` makes one) "
           "to turn them on")


@dataclass(frozen=True)
class AdminLogin:
    """Who may see the stats: one user name, and a password hash or (only) a password."""

    user: str
    password_hash: str | None = None
    password: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AdminLogin | None:
        """The login the environment sets, or None (the pages are off). ConfigError for a hash
        that is not one."""
        env = os.environ if env is None else env
        user = env.get(USER_VAR, "") or "admin"
        hashed, plain = env.get(HASH_VAR, ""), env.get(PASSWORD_VAR, "")
        if hashed:
            if not hashed.startswith(HASH_METHODS) or hashed.count("$") != 2:
                raise ConfigError(f"${HASH_VAR} is not a password hash: make one with `newsletter "
                                  "admin-password`")
            return cls(user, password_hash=hashed)
        return cls(user, password=plain) if plain else None

    def check(self, user: str, password: str) -> bool:
        """Both compared whatever the other is, the user name and a plain password in constant time."""
        user_ok = hmac.compare_digest(user.encode(), self.user.encode())
        if self.password_hash is not None:
            password_ok = check_password_hash(self.password_hash, password)
        else:
            password_ok = hmac.compare_digest(password.encode(), (self.password or "").encode())
        return user_ok and password_ok


class Desk:
    """What the stats pages keep per app: the login, the figures, the failed-login counter."""

    def __init__(self, login: AdminLogin | None, stats: Stats, limiter: RateLimiter, settings: Settings):
        self.login, self.stats, self.limiter, self.settings = login, stats, limiter, settings


@blueprint.record_once
def _setup(state) -> None:
    app_context = state.app.extensions["newsletter"]
    engine, settings = app_context.subscribers.engine, app_context.settings
    state.app.extensions["stats"] = Desk(AdminLogin.from_env(), Stats(engine, base_url=settings.base_url),
                                         RateLimiter(engine, app_context.key), settings)


def desk() -> Desk:
    return current_app.extensions["stats"]


@blueprint.before_request
def admin_only():
    """404 when no login is configured; 429 after too many failed logins; 401 without the login."""
    login, limiter = desk().login, desk().limiter
    if login is None:
        abort(404)
    ip = client_ip() or "unknown"
    before = limiter.peek("stats-login", ip, limit=FAILED_LOGINS, per=FAILED_LOGIN_WINDOW)
    if not before.allowed:
        return page_for_error(429), 429, {"Retry-After": str(before.retry_after), "Cache-Control": "no-store"}
    auth = request.authorization
    if auth is not None and auth.type == "basic" and login.check(auth.username or "", auth.password or ""):
        return None
    if auth is not None:  # a login that failed, not a browser's first request without one
        limiter.hit("stats-login", ip, limit=FAILED_LOGINS, per=FAILED_LOGIN_WINDOW)
    page = render_template("stats_login.html")
    return Response(page, 401, {"WWW-Authenticate": REALM, "Cache-Control": "no-store"})


@blueprint.after_request
def private(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"  # the list's figures: never in a shared cache
    return response


# -- pages ----------------------------------------------------------------------------------------

@blueprint.get("/stats")
def index():
    settings, stats = desk().settings, desk().stats
    tracked = {"opens": settings.track_opens, "clicks": settings.track_clicks}
    issues = stats.issues()
    weeks = stats.readers_by_week(settings.category_slugs)[-CHARTED_WEEKS:]
    names = {c.slug: c.name for c in settings.categories} | {EVERY_STORY: "every story (no topic chosen)"}
    return render_template("stats.html", rows=[figures_record(f, **tracked) for f in issues],
                           bars=bar_groups(issues[:CHARTED_ISSUES], **tracked), tracked=tracked,
                           readers=line_chart(weeks, names), labels=LABELS, number=number, percent=percent)


@blueprint.get("/stats/<issue>")
def issue(issue: str):
    settings, stats = desk().settings, desk().stats
    tracked = {"opens": settings.track_opens, "clicks": settings.track_clicks}
    try:
        figures: Figures = stats.issue(issue)
    except IssueNotFound:
        abort(404)
    links = stats.top_links(issue) if tracked["clicks"] else []
    return render_template("stats_issue.html", figures=figures, record=figures_record(figures, **tracked),
                           bars=bar_groups([figures], **tracked), links=links, tracked=tracked,
                           window_days=UNSUBSCRIBE_WINDOW.days, labels=LABELS, number=number, percent=percent)


def number(value) -> str:
    return "not tracked" if value is None else f"{value:,}"


def percent(rate: float | None) -> str:
    return "–" if rate is None else f"{rate * 100:.1f}%"


def turn_on_hint(env: Mapping[str, str] | None = None) -> str | None:
    """What `newsletter serve` says when the stats pages are off; None when they are on."""
    return TURN_ON if AdminLogin.from_env(env) is None else None
