"""What a reader sees: the example email in headless Chromium at phone and desktop widths."""

import functools
import http.server
import shutil
import struct
import threading
import zlib
from pathlib import Path

import pytest

from newsletter.render import LAYOUT, personalize, preview_links

from .conftest import ARTIFACTS, ROOT

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
SCREENSHOTS = ROOT / "build" / "screenshots"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--hide-scrollbars", "--window-size=1024,900"]


def png(width: int, height: int) -> bytes:
    """A solid-colour PNG, so the test's image has a real size without any network."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = b"".join(b"\x00" + b"\x4a\x6f\x8c" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail("Chromium and ChromeDriver are needed (Debian packages chromium, chromium-driver); "
                    "scripts/test.sh installs them")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def site(tmp_path_factory, renderer, example, session_settings):
    """The email served over loopback, its image URL pointed at a local copy."""
    root = tmp_path_factory.mktemp("site")
    (root / "images" / "2026-04-22").mkdir(parents=True)
    (root / "images" / "2026-04-22" / "kv-cache-chart.png").write_bytes(png(1200, 600))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    for name, categories in (("all", None), ("ai-tech", ["ai-tech"])):
        email = renderer.render(example, categories)
        page = personalize(email.html, preview_links(session_settings, example))
        (root / f"{name}.html").write_text(page.replace(session_settings.base_url, base))
    yield base
    server.shutdown()


def show(driver, url: str, width: int, dark: bool = False) -> None:
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": width, "height": 900, "deviceScaleFactor": 1, "mobile": width < 500})
    driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {
        "features": [{"name": "prefers-color-scheme", "value": "dark" if dark else "light"}]})
    driver.get(url)
    driver.execute_script("return new Promise(r => document.readyState === 'complete' ? r() : onload = r)")


def screenshot(driver, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    width = driver.execute_script("return window.innerWidth")
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": width, "height": min(height, 16000), "deviceScaleFactor": 1, "mobile": width < 500})
    path = SCREENSHOTS / f"{name}.png"
    driver.save_screenshot(str(path))
    ARTIFACTS.append(f"screenshot: {path}")
    print(f"screenshot: {path}")
    return path


OVERFLOW = """
const limit = window.innerWidth;
const wide = [];
for (const el of document.body.querySelectorAll('*')) {
  const style = getComputedStyle(el);
  if (style.display === 'none' || el.closest('[style*="display:none"]')) continue;
  const box = el.getBoundingClientRect();
  if (box.width > 0 && box.right > limit + 0.5)
    wide.push(el.tagName + '.' + el.className + ' right=' + Math.round(box.right));
}
return {scroll: document.documentElement.scrollWidth, inner: limit, wide: wide.slice(0, 5)};
"""


@pytest.mark.parametrize("width", [320, 375, 640])
@pytest.mark.parametrize("variant", ["all", "ai-tech"])
def test_no_horizontal_overflow(browser, site, width, variant):
    show(browser, f"{site}/{variant}.html", width)
    found = browser.execute_script(OVERFLOW)
    assert found["inner"] == width
    assert found["scroll"] <= width, found
    assert found["wide"] == [], found
    image = browser.execute_script(
        "const i = document.querySelector('img.img'); return i && [i.naturalWidth, i.getBoundingClientRect().width]")
    natural, shown = image
    assert natural == 1200, "the test image loaded"
    assert shown <= width - 2 * 16, "the image scales down to the column"
    assert shown >= min(width - 2 * LAYOUT.gutter, LAYOUT.column) - 1, "and still fills it"
    screenshot(browser, f"{variant}-{width}")


def test_cards_are_16_px_apart(browser, site):
    show(browser, f"{site}/all.html", 640)
    gaps = browser.execute_script("""
        const cells = Array.from(document.querySelectorAll('.card > table > tbody > tr > td'));
        const white = cells.map(td => { const top = td.getBoundingClientRect().top + td.clientTop;
            return [top, top + td.clientHeight]; });
        return white.slice(1).map((w, i) => w[0] - white[i][1]);""")
    assert len(gaps) >= 4 and all(abs(gap - 16) < 1 for gap in gaps), gaps


def test_images_are_coded_at_the_width_of_their_column(browser, site):
    """Outlook for Windows draws an image at its width attribute: it must be the column's real width."""
    show(browser, f"{site}/all.html", 1024)
    coded, shown, column = browser.execute_script("""
        const img = document.querySelector('img.img'), cell = img.closest('td.copy'), style = getComputedStyle(cell);
        return [Number(img.getAttribute('width')), img.getBoundingClientRect().width,
                cell.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight)];""")
    assert coded == column == shown == LAYOUT.column


def contrast(fg, bg) -> float:
    def luminance(rgb):
        channels = [c / 255 for c in rgb]
        channels = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
        return 0.2126 * channels[0] + 0.7152 * channels[1] + 0.0722 * channels[2]
    lighter, darker = sorted((luminance(fg), luminance(bg)), reverse=True)
    return (lighter + 0.05) / (darker + 0.05)


# A colour as [r, g, b], and the background an element is drawn on (its own or an ancestor's).
BACKGROUND = """
function rgb(s) { return s.match(/\\d+/g).slice(0, 3).map(Number); }
function background(el) {
  for (; el; el = el.parentElement) {
    const c = getComputedStyle(el).backgroundColor;
    if (c && c !== 'rgba(0, 0, 0, 0)' && c !== 'transparent') return rgb(c);
  }
  return [255, 255, 255];
}
"""
COLOURS = BACKGROUND + """return Array.from(document.querySelectorAll(arguments[0])).map(el =>
  [el.tagName + '.' + el.className, rgb(getComputedStyle(el).color), background(el)]);
"""

# What the design intends each kind of text to be, light and dark (inline.css, dark.css).
INTENDED = {  # name: (CSS selector, light, dark)
    "masthead": (".masthead", "#5b6470", "#a4a9b1"),
    "brand": (".brand", "#16181d", "#e8e6e3"),
    "title": ("h1", "#16181d", "#e8e6e3"),
    "story heading": ("h2", "#16181d", "#e8e6e3"),
    "dek": (".dek", "#3a3f47", "#c9c6c0"),
    "byline": (".byline", "#5b6470", "#a4a9b1"),
    "TL;DR label": (".tldr-label", "#b4451f", "#f08a5d"),
    "TL;DR text": (".tldr li", "#1f2328", "#e8e6e3"),
    "story text": (".card .copy > div > p:not([class])", "#1f2328", "#e8e6e3"),
    "source line": (".source", "#5b6470", "#a4a9b1"),
    "pull quote": ("blockquote.pull p", "#3a3f47", "#c9c6c0"),
    "footnote reference": ("sup.fnref a", "#0b57d0", "#8ab4f8"),
    "note": (".note", "#1f2328", "#e8e6e3"),
    "note's source link": (".note > a[href^='http']", "#0b57d0", "#8ab4f8"),
    "note's domain": (".note .domain", "#5b6470", "#a4a9b1"),
    "note's quote": (".note-quote", "#4b525c", "#c9c6c0"),
    "back-link": ("a.back", "#0b57d0", "#8ab4f8"),
    "footer": ("p.footer", "#5b6470", "#a4a9b1"),
    "footer link": ("p.footer a", "#5b6470", "#a4a9b1"),
}
CARD = {"light": "rgb(255, 255, 255)", "dark": "rgb(28, 30, 34)", "outlook.com": "rgb(28, 30, 34)"}
# Outlook.com does not apply prefers-color-scheme in its dark mode: it marks what it recolours
# with data-ogsc (text) and data-ogsb (backgrounds), and our [data-ogsc]/[data-ogsb] rules answer.
OUTLOOK_DARK = "document.documentElement.setAttribute('data-ogsc', ''); " \
               "document.documentElement.setAttribute('data-ogsb', '')"


def rgb(hex_colour: str) -> list[int]:
    return [int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)]


@pytest.mark.parametrize("mode", ["light", "dark", "outlook.com"])
def test_each_kind_of_text_has_its_intended_colour(browser, site, mode):
    """Chromium's computed colour of every kind of text is the design's for the mode, and readable:
    a general rule (`.copy p`) must not outrank the rule for a kind of text (`.masthead`)."""
    show(browser, f"{site}/all.html", 640, dark=mode == "dark")
    if mode == "outlook.com":
        browser.execute_script(OUTLOOK_DARK)
    card = browser.execute_script("return getComputedStyle(document.querySelector('.card')).backgroundColor")
    assert card == CARD[mode]
    wrong = []
    for name, (selector, light, dark) in INTENDED.items():
        samples = browser.execute_script(COLOURS, selector)
        assert samples, f"no {name} ({selector}) in the email"
        intended = rgb(light if mode == "light" else dark)
        for element, fg, bg in samples:
            if fg != intended:
                wrong.append(f"{name} ({element}): {fg}, intended {intended}")
            assert contrast(fg, bg) >= 4.5, f"{name} ({element}): {fg} on {bg} ({mode} mode)"
    assert wrong == [], f"{mode} mode: " + "; ".join(dict.fromkeys(wrong))
    screenshot(browser, f"all-640-{mode.replace('.', '-')}")


def test_back_links_are_tap_targets_of_24_px(browser, site):
    show(browser, f"{site}/all.html", 375)
    sizes = browser.execute_script(
        "return Array.from(document.querySelectorAll('a.back'), a => [a.textContent, "
        "a.getBoundingClientRect().width, a.getBoundingClientRect().height])")
    assert len(sizes) > 20
    small = [s for s in sizes if s[1] < 24 or s[2] < 24]
    assert small == [], f"{len(small)} back-links smaller than 24 x 24 px: {small[:3]}"


LINES = """
const out = [];
for (const quote of document.querySelectorAll('.note-quote')) {
  const range = document.createRange();
  range.selectNodeContents(quote);
  const lines = [];
  for (const r of range.getClientRects()) {
    const line = lines.find(l => Math.abs(l.top - r.top) < 4);
    if (line) line.left = Math.min(line.left, r.left); else lines.push({top: r.top, left: r.left});
  }
  lines.sort((a, b) => a.top - b.top);
  const number = quote.parentElement.querySelector('b').getBoundingClientRect().left;
  out.push({number, lines: lines.map(l => l.left), display: getComputedStyle(quote).display});
}
return out;
"""


def test_a_notes_quote_is_an_indented_block_its_quotation_mark_hanging(browser, site):
    show(browser, f"{site}/all.html", 375)
    quotes = browser.execute_script(LINES)
    assert len(quotes) == 18
    assert any(len(q["lines"]) > 2 for q in quotes), "some quotes wrap at 375 px"
    for q in quotes:
        first, *rest = q["lines"]
        assert q["display"] == "block", "the quote starts on a line of its own"
        assert all(abs(left - rest[0]) < 0.5 for left in rest), f"every line after the first starts alike: {q}"
        if rest:
            assert 2 <= rest[0] - first <= 8, f"only the opening quotation mark hangs: {q}"
        assert first >= q["number"] + 12, f"the quote is indented under its note: {q}"


def test_footnote_reference_jumps_to_its_note_and_back(browser, site):
    show(browser, f"{site}/all.html", 375)
    ref = browser.find_elements("css selector", "sup.fnref a")[5]
    number = ref.text
    browser.execute_script("arguments[0].scrollIntoView(); arguments[0].click()", ref)
    top = browser.execute_script(f"return document.getElementsByName('fn-{number}')[0].getBoundingClientRect().top")
    assert -2 <= top < 100, "the note is at the top of the screen"
    back = browser.find_element("css selector", f"a.back[href='#{ref.get_attribute('id')}']")
    browser.execute_script("arguments[0].click()", back)
    top = browser.execute_script("return arguments[0].getBoundingClientRect().top", ref)
    assert -2 <= top < 100, "the back-reference returns to the citation"


@pytest.fixture(scope="module")
def blind_browser():
    """Chromium with images blocked, as many mail clients open an email until the reader allows them."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS + ["--blink-settings=imagesEnabled=false"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


@pytest.mark.parametrize("width", [320, 375])
def test_layout_holds_with_images_blocked(blind_browser, site, width):
    """The alt text of a blocked image stays inside the column: no wider page, no sideways scroll."""
    show(blind_browser, f"{site}/all.html", width)
    loaded = blind_browser.execute_script("const i = document.querySelector('img.img'); return i.complete && i.naturalWidth")
    assert loaded == 0, "the image is blocked"
    found = blind_browser.execute_script(OVERFLOW)
    assert found["inner"] == width
    assert found["scroll"] <= width, found
    assert found["wide"] == [], found
    screenshot(blind_browser, f"all-{width}-images-blocked")


DETECTED = """
const [where, how] = arguments;
const p = document.querySelector(where);
const a = document.createElement('a');
if (how === 'apple') { a.href = 'x-apple-data-detectors://0'; a.setAttribute('x-apple-data-detectors', 'true'); }
else {  // Samsung Mail shows the email inside <div id="MessageViewBody"> and links what it recognises
  const view = document.createElement('div');
  view.id = 'MessageViewBody';
  view.append(...document.body.childNodes);
  document.body.append(view);
  a.href = 'geo:0,0?q=address';
}
a.append(...p.childNodes);
p.append(a);
const text = getComputedStyle(p), link = getComputedStyle(a);
return [text.color, link.color, link.textDecorationLine, text.fontSize, link.fontSize];
"""


@pytest.mark.parametrize("where, how", [(".masthead", "apple"), ("p.footer:last-child", "samsung")])
def test_dates_and_addresses_a_mail_app_links_look_like_the_text(browser, site, where, how):
    """Apple Mail links dates, Samsung Mail addresses: the link keeps the text's colour and size."""
    show(browser, f"{site}/all.html", 375)
    text_colour, link_colour, underline, text_size, link_size = browser.execute_script(DETECTED, where, how)
    assert (link_colour, underline, link_size) == (text_colour, "none", text_size)


def test_preheader_is_not_seen(browser, site):
    show(browser, f"{site}/all.html", 375)
    shown = browser.execute_script(
        "const d = Array.from(document.querySelectorAll('div')).find(d => d.firstChild"
        " && d.firstChild.nodeType === Node.TEXT_NODE && d.firstChild.data.startsWith('A self-checking'));"
        "return [d.getClientRects().length, getComputedStyle(d).display]")
    assert shown == [0, "none"]


# -- the official MJML compiler: writers who override templates check them in MJML's own tools ---

OFFICIAL_MJML = ROOT / "tools" / "mjml"


def official_mjml(source: str) -> str:
    """`source` compiled by the official MJML compiler (npm `mjml`, strict validation)."""
    import subprocess

    node = shutil.which("node")
    if not node or not (OFFICIAL_MJML / "node_modules" / "mjml").is_dir():
        pytest.skip("the official MJML compiler is not installed (needs node and npm; scripts/test.sh "
                    "installs it into tools/mjml)")
    done = subprocess.run([node, str(OFFICIAL_MJML / "compile.js")], input=source, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, f"the official compiler refuses the template: {done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def both_compilers(tmp_path_factory, site, renderer, example, session_settings):
    """The example email compiled by mjml-python and by the official compiler, then finished the same way."""
    from newsletter.render import finish, select

    source = renderer.mjml(select(example))
    folder = tmp_path_factory.mktemp("compilers")
    pages = {}
    for name, compiled in (("mjml-python", renderer.compile(source)), ("official", finish(official_mjml(source)))):
        page = personalize(renderer.inline(compiled), preview_links(session_settings, example))
        (folder / f"{name}.html").write_text(page.replace(session_settings.base_url, site))
        pages[name] = (folder / f"{name}.html").as_uri()
    return pages


LOOK = """
function bg(el) {
  for (; el; el = el.parentElement) {
    const c = getComputedStyle(el).backgroundColor;
    if (c !== 'rgba(0, 0, 0, 0)') return c;
  }
  return 'canvas';
}
function gutters() {  // beside the cards (on a wide screen), and below the footer
  const found = innerWidth > 700 ? [bg(document.elementFromPoint(8, 400)), bg(document.elementFromPoint(innerWidth - 8, 400))] : [];
  window.scrollTo(0, document.documentElement.scrollHeight);
  found.push(bg(document.elementFromPoint(8, innerHeight - 4)));
  window.scrollTo(0, 0);
  return found;
}
const card = document.querySelector('.card');
const colours = {};
for (const [name, selector] of arguments[0]) colours[name] = getComputedStyle(document.querySelector(selector)).color;
return {
  body: getComputedStyle(document.body).backgroundColor,
  gutters: gutters(),
  card: [card.getBoundingClientRect().width, getComputedStyle(card).backgroundColor],
  page: document.documentElement.scrollWidth,
  colours,
};
"""


@pytest.mark.parametrize("width", [1024, 375])
@pytest.mark.parametrize("dark", [False, True])
def test_the_official_mjml_compiler_renders_the_same(browser, both_compilers, dark, width):
    seen = {}
    for name, url in both_compilers.items():
        show(browser, url, width, dark=dark)
        seen[name] = browser.execute_script(LOOK, [[k, v[0]] for k, v in INTENDED.items()])
    page = "rgb(16, 17, 20)" if dark else "rgb(243, 240, 232)"
    for name, look in seen.items():
        assert look["body"] == page and set(look["gutters"]) == {page}, f"{name}: {look}"
        assert look["card"] == [min(width, LAYOUT.width), CARD["dark" if dark else "light"]], f"{name}: {look}"
    assert seen["official"] == seen["mjml-python"]
    shots = {}
    for name, url in both_compilers.items():
        show(browser, url, width, dark=dark)
        shots[name] = browser.execute_cdp_cmd("Page.captureScreenshot", {"captureBeyondViewport": True})["data"]
    assert shots["official"] == shots["mjml-python"], "the whole email looks the same, pixel for pixel"
