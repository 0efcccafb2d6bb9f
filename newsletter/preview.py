"""`newsletter preview`: write a variant to a file, or serve it live on 127.0.0.1."""

from __future__ import annotations

import hashlib
import html
import json
import re
import threading
import webbrowser
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from .config import Settings
from .digest import load_digest
from .errors import DigestError, NewsletterError
from .files import write_atomic
from .render import Email, Renderer, personalize, preview_links


@dataclass
class PreviewResult:
    path: Path
    size: int
    notes: int
    stories: int
    variant: str
    warnings: list[str]


def render_preview(settings: Settings, file: Path, categories: list[str] | None,
                   renderer: Renderer | None = None) -> tuple[Email, list[str]]:
    """Render FILE for `categories` with preview links filled in; return it and its warnings."""
    digest = load_digest(file, settings)
    email = (renderer or Renderer(settings)).render(digest, categories)
    links = preview_links(settings, digest)
    email.html, email.text = personalize(email.html, links, html=True), personalize(email.text, links)
    return email, [str(w) for w in digest.warnings] + email.warnings()


def write_preview(settings: Settings, file: Path, categories: list[str] | None, *,
                  out: Path | None = None, text: bool = False) -> PreviewResult:
    """Render and write atomically: on any error, nothing is written."""
    email, warnings = render_preview(settings, file, categories)
    variant = email.variant.key
    if out is None:
        suffix = "" if categories is None else f".{variant}"
        out = settings.output_dir / f"{file.stem}{suffix}.{'txt' if text else 'html'}"
    content = email.text if text else email.html
    write_atomic(out, content)
    return PreviewResult(out, len(content.encode()), len(email.variant.notes),
                         len(email.variant.stories), variant, warnings)


# -- live preview -------------------------------------------------------------------------------

class LivePreview:
    """Re-renders when the digest, the settings or a template changes."""

    def __init__(self, settings: Settings, file: Path, categories: list[str] | None):
        self.settings, self.file, self.categories = settings, file, categories
        self.renderer = Renderer(settings)
        self._lock = threading.Lock()
        self._cache: tuple[str, str, str] | None = None  # (version, html, text)

    def watched(self) -> list[Path]:
        folders = [f for f in self.renderer.env.loader.searchpath]
        files = [self.file] + ([self.settings.config_path] if self.settings.config_path else [])
        return files + sorted(p for folder in folders for p in Path(folder).rglob("*") if p.is_file())

    def version(self) -> str:
        stamp = hashlib.sha1()
        for path in self.watched():
            try:
                st = path.stat()
                stamp.update(f"{path}:{st.st_mtime_ns}:{st.st_size};".encode())
            except OSError:
                stamp.update(f"{path}:missing;".encode())
        return stamp.hexdigest()[:16]

    def current(self) -> tuple[str, str, str]:
        version = self.version()
        with self._lock:
            if self._cache is None or self._cache[0] != version:
                self.renderer = Renderer(self.settings)  # templates may have changed
                try:
                    email, warnings = render_preview(self.settings, self.file, self.categories,
                                                     self.renderer)
                    banner = "".join(f"<p>warning: {html.escape(w)}</p>" for w in warnings)
                    page = email.html if not banner else re.sub(
                        r"(<body[^>]*>)", lambda m: f'{m.group(1)}<div style="{BANNER_STYLE}">{banner}</div>',
                        email.html, count=1)
                    self._cache = (version, page, email.text)
                except NewsletterError as e:
                    lines = e.problems if isinstance(e, DigestError) else [e]
                    body = "".join(f"<p>error: {html.escape(str(p))}</p>" for p in lines)
                    self._cache = (version, f'<!doctype html><div style="{BANNER_STYLE}">{body}</div>',
                                   "\n".join(f"error: {p}" for p in lines))
            return self._cache


BANNER_STYLE = "font:14px monospace;background:#fff3cd;color:#5c4400;padding:8px 12px;margin:0"


LOCAL_HOSTS = ("127.0.0.1", "localhost")


def local_host(host: str | None, port: int) -> bool:
    """Whether a request's Host header names this machine's preview: a page of another site
    whose name was made to point at 127.0.0.1 (DNS rebinding) must not read the digest."""
    name, _, given = (host or "").strip().lower().rpartition(":")
    if not name or not given.isdigit():  # no port given
        name, given = (host or "").strip().lower(), str(port)
    return name in LOCAL_HOSTS and int(given) == port


def make_server(live: LivePreview, port: int) -> ThreadingHTTPServer:
    page = live.renderer.env.get_template("preview/page.html")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            if not local_host(self.headers.get("Host"), self.server.server_address[1]):
                return self._refuse()
            route = self.path.split("?")[0]
            if route == "/":
                body = page.render(file=str(live.file), variant=",".join(live.categories or []) or "all",
                                   version=live.version())
                self._send(body, "text/html")
            elif route == "/email.html":
                self._send(live.current()[1], "text/html")
            elif route == "/email.txt":
                self._send(live.current()[2], "text/plain")
            elif route == "/version":
                self._send(json.dumps({"version": live.version()}), "application/json")
            else:
                self.send_error(404)

        def _send(self, body: str, kind: str) -> None:
            data = body.encode("utf-8")
            self.send_response(200)
            self.send_header("Content-Type", f"{kind}; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)

        def _refuse(self) -> None:
            data = b"this preview answers only to 127.0.0.1 and localhost\n"
            self.send_response(421)  # Misdirected Request
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
            self.close_connection = True

        def log_message(self, *args) -> None:  # quiet: the terminal is for errors
            pass

    return ThreadingHTTPServer(("127.0.0.1", port), Handler)


def serve(settings: Settings, file: Path, categories: list[str] | None, *, port: int,
          open_browser: bool = False) -> None:
    """Serve the live preview until Ctrl-C."""
    live = LivePreview(settings, file, categories)
    live.current()
    try:
        server = make_server(live, port)
    except OSError as e:
        raise NewsletterError(f"cannot listen on 127.0.0.1:{port}: {e.strerror} "
                              "(choose another with --port)") from None
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    print(f"previewing {file} at {url} (Ctrl-C to stop)", flush=True)
    if open_browser:
        webbrowser.open(url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
