import http.client
import json
import threading
import time
import urllib.request

import pytest

from newsletter.preview import LivePreview, make_server

from .conftest import EXAMPLE, ROOT


@pytest.fixture
def served(tmp_path, settings):
    digest = tmp_path / EXAMPLE.name
    digest.write_text(EXAMPLE.read_text())
    live = LivePreview(settings, digest, None)
    server = make_server(live, 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    yield base, digest
    server.shutdown()
    server.server_close()


def get(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def test_page_shows_desktop_and_mobile(served):
    base, _ = served
    page = get(base + "/")
    assert 'id="desktop"' in page and 'id="mobile"' in page
    assert "#mobile { width: 375px; }" in page
    assert get(base + "/email.html").startswith("<!doctype html>")
    assert "LEMMA-7B LEARNS" in get(base + "/email.txt")


def test_edit_changes_version_and_email(served):
    base, digest = served
    before = json.loads(get(base + "/version"))["version"]
    assert before in get(base + "/")  # the page starts from the version it was served with
    time.sleep(0.01)
    digest.write_text(digest.read_text().replace("Lemma-7B learns when", "Lemma-7B now learns when"))
    after = json.loads(get(base + "/version"))["version"]
    assert after != before
    assert "Lemma-7B now learns when" in get(base + "/email.html")


def test_broken_digest_shows_the_error_and_recovers(served):
    base, digest = served
    good = digest.read_text()
    digest.write_text(good.replace("Every claim below", "TK Every claim below"))
    page = get(base + "/email.html")
    assert "leftover placeholder" in page and ":19:" in page
    digest.write_text(good)
    assert "Every claim below" in get(base + "/email.html")


def test_template_change_reloads(tmp_path, settings):
    custom = tmp_path / "templates" / "email"
    custom.mkdir(parents=True)
    template = custom / "digest.mjml"
    template.write_text((ROOT / "templates" / "email" / "digest.mjml").read_text())
    live = LivePreview(settings.with_overrides(templates_dir=tmp_path / "templates"), EXAMPLE, None)
    version, page, _ = live.current()
    assert "Thanks for reading" not in page
    template.write_text(template.read_text().replace("You are receiving", "Thanks for reading. You are receiving"))
    assert live.version() != version
    assert "Thanks for reading" in live.current()[1]


def ask(base, host):
    """GET / with this Host header, as a browser sends it for a page of that name."""
    connection = http.client.HTTPConnection(base.removeprefix("http://"), timeout=10)
    try:
        connection.putrequest("GET", "/email.html", skip_host=True)
        if host is not None:
            connection.putheader("Host", host)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def test_only_local_host_names_are_answered(served):
    """DNS rebinding: a site whose name points at 127.0.0.1 must not read the digest."""
    base, _ = served
    port = base.rpartition(":")[2]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}", "127.0.0.1", "localhost"):
        status, body = ask(base, host)
        assert status == 200 and body.startswith("<!doctype html>"), host
    for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1.evil.example:{port}",
                 f"localhost.evil.example:{port}", "127.0.0.1:1", "", None):
        status, body = ask(base, host)
        assert status == 421, host
        assert body == "this preview answers only to 127.0.0.1 and localhost\n", host
