"""`newsletter serve`: the reader web app under waitress, a production WSGI server."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from pathlib import Path

import click

from .cli import App, cli, pass_app, shown_path
from .signups import where_confirmations_go
from .web.webhooks import PATH, SECRET_VAR, secret_from_environment

SWITCH_INTERVAL = 0.0005  # seconds; measured with benchmarks/bench_web.py
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface; usually a reverse proxy is in front).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on (0: any free port, printed at start).")
@click.option("--threads", default=4, show_default=True, type=click.IntRange(1, 256),
              help="Requests served at once by each process.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Server processes sharing the port (more than one: for PostgreSQL and more cores).")
@pass_app
def serve(app: App, host: str, port: int, threads: int, workers: int) -> None:
    """Serve the reader web app: unsubscribe and preference links, signup, the archive."""
    from .web import create_app
    from .web.stats import turn_on_hint as stats_hint

    settings = app.settings
    web = create_app(settings)  # refuses a missing or outdated database, with the command to run
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stderr)
    logging.getLogger("waitress").setLevel(logging.WARNING)  # it logs every listen address at INFO
    sock = _listen(host, port)
    shown_host = f"[{host}]" if ":" in host else host
    click.echo(f"serving {settings.name} on http://{shown_host}:{sock.getsockname()[1]} "
               f"(links in emails point to {settings.base_url}"
               f"{f'; {workers} processes' if workers > 1 else ''})", err=True)
    if settings.provider == "resend" or secret_from_environment():
        click.echo(f"Resend's webhooks: POST {settings.base_url}{PATH}" if secret_from_environment() else
                   f"Resend's webhooks are refused: ${SECRET_VAR} is not set", err=True)
    if hint := stats_hint():
        click.echo(hint, err=True)
    outbox = where_confirmations_go(settings)
    if outbox:
        click.echo(f"confirmation emails go to the outbox: {shown_path(Path(outbox))}", err=True)
    # Threads waiting on the database hand the interpreter back sooner (5 ms by default): a thread
    # that holds a write transaction is not left waiting behind threads parsing requests.
    sys.setswitchinterval(SWITCH_INTERVAL)
    if workers == 1:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # systemd's stop: a clean exit
        _run(web, sock, threads)
        return
    web.extensions["newsletter"].subscribers.close()  # each process opens its own connections
    children: list[int] = []
    stopping: list[int] = []

    def stop(signum, _frame) -> None:
        stopping.append(signum)
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, stop)  # before the first fork: no child is ever left behind
    signal.signal(signal.SIGINT, stop)
    for _ in range(workers):
        children.append(_fork(lambda: _run(create_app(settings), sock, threads)))
        if stopping:  # stopped while forking: this child missed the signal
            stop(signal.SIGTERM, None)
            break
    sock.close()
    failed = 0
    for pid in children:
        while True:
            try:
                _, status = os.waitpid(pid, 0)
                break
            except InterruptedError:
                continue
        failed += os.waitstatus_to_exitcode(status) not in (0, -signal.SIGTERM)
    if failed:
        raise click.ClickException(f"{failed} of {workers} server processes failed")


def _listen(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(1024)
    except OSError as e:
        raise click.ClickException(f"cannot listen on {host}:{port}: {e.strerror}") from None
    return sock


def _run(web, sock: socket.socket, threads: int) -> None:
    from waitress.server import create_server

    server = create_server(web, sockets=[sock], threads=threads, ident="newsletter",
                           clear_untrusted_proxy_headers=True)
    try:
        server.run()
    finally:
        server.close()


def _fork(work) -> int:
    """Run `work` in a child process that shares the listening socket; the child's pid."""
    pid = os.fork()
    if pid:
        return pid
    code = 0
    try:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops the children
        work()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 0
    except BaseException:  # noqa: BLE001 - a child must never return into the parent's code
        logging.getLogger("newsletter.web").exception("server process failed")
        code = 1
    finally:
        os._exit(code)
