"""The reader web app: everything a reader touches outside their inbox.

`create_app(settings)` builds a Flask application with one blueprint per concern:

    readers   /u/TOKEN (unsubscribe, RFC 8058 one-click), /p/TOKEN (preferences)
    signup    /subscribe, /confirm/SIGNED (double opt-in)
    archive   /issues/, /issues/SLUG, /feed.xml
    webhooks  /webhooks/resend (Resend's signed reports: delivered, bounced, complained, ...)
    stats     /stats, /stats/ISSUE (how each issue did; behind a login, off without one)

plus `/healthz`. `newsletter serve` runs it under waitress. The app never migrates the database:
a schema that is not current stops it at start with the command to run.
"""

from __future__ import annotations

import hashlib
import hmac
import logging

import jinja2
from flask import Flask, Response, render_template, request
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from ..config import Settings, load_secret_key, load_settings
from ..errors import NewsletterError, StoreError
from ..links import Links
from ..render import default_templates_dir
from ..subscribers import Subscribers
from . import security

log = logging.getLogger("newsletter.web")
MAX_BODY = 64 * 1024  # every form we take is a few hundred bytes


class App(Flask):
    def log_exception(self, exc_info) -> None:
        # Flask's own message names the path, which may hold a reader's token: only the method.
        self.logger.error("unhandled error on %s %s", request.method, request.blueprint or "-",
                          exc_info=exc_info)


def create_app(settings: Settings | None = None, *, subscribers: Subscribers | None = None,
               key: bytes | None = None) -> Flask:
    """The app for `settings` (default: newsletter.toml or $NEWSLETTER_CONFIG, as the CLI reads).

    Raises StoreError when the database is missing or its schema is not current, ConfigError for
    bad settings: `newsletter serve` shows either as one line.
    """
    settings = settings or load_settings()
    key = key if key is not None else load_secret_key(settings)
    if subscribers is None:
        subscribers = Subscribers.from_settings(settings, migrate=False, create=False)
    templates = default_templates_dir()
    app = App(__name__, static_folder=str(templates / "web" / "static"), static_url_path="/static",
              template_folder=str(templates / "web"))
    folders = [settings.templates_dir / "web"] if settings.templates_dir else []
    app.jinja_loader = jinja2.FileSystemLoader([*map(str, folders), str(templates / "web")])
    app.config.update(
        SECRET_KEY=hmac.new(key, b"newsletter-flask\x00", hashlib.sha256).digest(),
        MAX_CONTENT_LENGTH=MAX_BODY, MAX_FORM_MEMORY_SIZE=MAX_BODY,
        SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax",
    )
    app.extensions["newsletter"] = Context(settings, subscribers, key)
    if settings.proxy_hops:  # only behind proxies the writer told us about: else anyone sets them
        hops = settings.proxy_hops
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops)

    from . import archive, readers, signup, stats, webhooks

    app.register_blueprint(readers.blueprint)
    app.register_blueprint(signup.blueprint)
    app.register_blueprint(archive.blueprint)
    app.register_blueprint(webhooks.blueprint)
    app.register_blueprint(stats.blueprint)
    app.after_request(security.headers)
    app.context_processor(lambda: {"newsletter": settings, "csrf_field": security.csrf_field})

    @app.get("/healthz")
    def healthz() -> Response:
        try:
            subscribers.ping()
        except NewsletterError:
            log.warning("health check: the database does not answer")
            return Response("database unavailable\n", 503, mimetype="text/plain")
        return Response("ok\n", 200, mimetype="text/plain")

    @app.get("/")
    def home():
        return render_template("home.html")

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        return page_for_error(error.code or 500), error.code or 500

    @app.errorhandler(StoreError)
    def store_error(error: StoreError):
        log.error("database error: %s", error)
        return page_for_error(503), 503

    @app.errorhandler(Exception)
    def unexpected(error: Exception):
        app.log_exception((type(error), error, error.__traceback__))
        return page_for_error(500), 500

    return app


TITLES = {400: "That did not work", 404: "Page not found", 405: "That did not work",
          413: "That did not work", 429: "Too many requests", 503: "Please try again later"}


def page_for_error(code: int) -> str:
    """One page per status, the same for every cause: a 404 says nothing about why."""
    return render_template("error.html", code=code, title=TITLES.get(code, "Something went wrong"))


class Context:
    """What every request needs, made once per app."""

    def __init__(self, settings: Settings, subscribers: Subscribers, key: bytes):
        self.settings = settings
        self.subscribers = subscribers
        self.key = key
        self.links = Links(settings.base_url, key)
        self.one_click_page: str | None = None


def context() -> Context:
    from flask import current_app

    return current_app.extensions["newsletter"]
