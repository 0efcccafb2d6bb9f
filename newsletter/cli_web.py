"""`newsletter serve`: the reader web app under waitress, a production WSGI server."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

import click

from .cli import App, cli, pass_app, shown_path
from .signups import where_confirmations_go

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface; usually a reverse proxy is in front).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on (0: any free port, printed at start).")
@click.option("--threads", default=8, show_default=True, type=click.IntRange(1, 256),
              help="Requests served at once.")
@pass_app
def serve(app: App, host: str, port: int, threads: int) -> None:
    """Serve the reader web app: unsubscribe and preference links, signup, the archive."""
    from waitress.server import create_server

    from .web import create_app

    settings = app.settings
    web = create_app(settings)  # refuses a missing or outdated database, with the command to run
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stderr)
    logging.getLogger("waitress").setLevel(logging.WARNING)  # it logs every listen address at INFO
    try:
        server = create_server(web, host=host, port=port, threads=threads, ident="newsletter",
                               clear_untrusted_proxy_headers=True)
    except OSError as e:
        raise click.ClickException(f"cannot listen on {host}:{port}: {e.strerror}") from None
    bound = getattr(server, "effective_port", port)
    shown_host = f"[{host}]" if ":" in host else host
    click.echo(f"serving {settings.name} on http://{shown_host}:{bound} "
               f"(links in emails point to {settings.base_url})", err=True)
    outbox = where_confirmations_go(settings)
    if outbox:
        click.echo(f"confirmation emails go to the outbox: {shown_path(Path(outbox))}", err=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # systemd's stop: a clean exit
    try:
        server.run()
    finally:
        server.close()
