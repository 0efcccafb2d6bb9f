"""What passes `check` sends: every variant is rendered and its message built before a run opens."""

from __future__ import annotations

import dataclasses

import pytest

from newsletter.errors import RenderError, SendError
from newsletter.ledger import Recipient
from newsletter.render import Renderer, default_templates_dir
from newsletter.send import Composer, possible_variants, prepare, render_variants
from newsletter.subscribers import Consent, ConsentMethod, Subscribers

from .conftest import EXAMPLE

READERS = [(), ("ai-tech",), ("essays",), ("ai-research", "ai-news"), ()]

HOSTILE = {
    "unclosed-div": ("An issue", "Some <div>text that never closes.\n\nAnother paragraph."),
    "unquoted-img": ("An issue", "x <img src=x> y"),
    "unclosed-p": ("An issue", "<p>unclosed"),
    "crlf-title": ('"Weekly\\r\\nBcc: everyone@example.org"', "Text."),
    "nul-title": ('"Weekly\\0 issue"', "Text."),
    "control-chars": ("An issue", "text \x02x\x03 and \x00 and \x1b[31m red"),
    "deep-nesting": ("An issue", "<div>" * 300 + "deep" + "</div>" * 300),
}


@pytest.fixture
def cli(run, monkeypatch, tmp_path, session_settings):
    """The CLI on an SQLite file with five readers, sending to an outbox."""
    url = f"sqlite:///{tmp_path / 'subscribers.db'}"
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", url)
    monkeypatch.setenv("NEWSLETTER_OUTBOX_DIR", str(tmp_path / "outbox"))
    subs = Subscribers.open(url, session_settings.categories)
    for i, cats in enumerate(READERS):
        subs.add(f"r{i}@example.com", categories=cats, consent=Consent(ConsentMethod.CLI))
    subs.close()
    return run


def outbox(tmp_path) -> list[str]:
    folder = tmp_path / "outbox"
    return sorted(p.name for p in folder.glob("*.eml")) if folder.exists() else []


def hostile_digest(tmp_path, name: str) -> str:
    title, body = HOSTILE[name]
    path = tmp_path / f"{name}.md"
    path.write_text(f"---\ntitle: {title}\n---\n\nIntro.\n\n## A story\n\n{body}\n\n## Another story\n\n"
                    "The end.\n", encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_what_check_accepts_sends_and_what_it_refuses_opens_no_run(cli, tmp_path, name):
    digest = hostile_digest(tmp_path, name)
    checked = cli("check", digest)
    sent = cli("send", digest, "--yes")
    for result in (checked, sent):
        assert "Traceback" not in result.err and "error: unexpected" not in result.err, result.err
    if checked.code == 0:  # accepted: then it sends, to every reader
        assert sent.code == 0, sent.err
        assert len(outbox(tmp_path)) == len(READERS)
        assert "finished" in cli("runs").out
    else:  # refused: the same one-line error at send time, and nothing started
        assert checked.code == 1 and f"error: {digest}" in checked.err, checked.err
        assert sent.code == 1, sent.err
        errors = [line for line in sent.err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and errors[0].startswith(f"error: {digest}"), sent.err
        assert "run 1 started" not in sent.out
        assert name not in cli("runs").out, "a refused digest leaves no run behind"
        assert outbox(tmp_path) == []


def test_check_renders_every_variant_a_reader_could_get(cli, tmp_path, monkeypatch):
    """A template that breaks only for readers of one category: `check` finds it, as `send` would."""
    folder = tmp_path / "templates" / "email"
    folder.mkdir(parents=True)
    original = (default_templates_dir() / "email" / "digest.mjml").read_text()
    broken = original.replace('<mj-body ', '{% if variant.key == "essays" %}<mj-text>{% endif %}\n<mj-body ', 1)
    assert broken != original
    (folder / "digest.mjml").write_text(broken)
    monkeypatch.setenv("NEWSLETTER_TEMPLATES_DIR", str(tmp_path / "templates"))
    result = cli("check", EXAMPLE)
    assert result.code == 1 and "variant essays" in result.err, result.err
    monkeypatch.delenv("NEWSLETTER_TEMPLATES_DIR")
    result = cli("check", EXAMPLE)
    assert result.code == 0 and "16 variants rendered" in result.out, result.err


def test_possible_variants_are_the_ones_plan_can_give(example):
    keys = possible_variants(example)
    assert keys[0] == "all" and len(keys) == len(set(keys)) == 16
    assert {"ai-tech", "ai-research", "ai-news+essays", "ai-news+ai-research+ai-tech+essays"} <= set(keys)


def test_settings_that_would_break_a_header_stop_before_the_run(settings, example, tmp_path):
    renderer = Renderer(settings)
    for bad in (dict(name="Weekly\r\nBcc: everyone@example.org"), dict(reply_to="a@example.org\nX: y"),
                dict(sender="Weekly <w@example.org>\x00")):
        with pytest.raises(SendError, match=r"2026-04-22-open-models-weekly\.md: .*control character"):
            prepare(renderer, example, settings.with_overrides(**bad), ["all"])
    assert prepare(renderer, example, settings, ["all", "ai-tech"]).keys() == {"all", "ai-tech"}


def test_an_email_cut_short_by_the_inliner_is_an_error(settings, example):
    """lxml stops at about 256 levels of nesting and premailer returns what it read so far."""
    renderer = Renderer(settings)
    deep = dataclasses.replace(example, stories=list(example.stories))
    story = deep.stories[0] = dataclasses.replace(example.stories[0])
    story.body_html = "<div>" * 300 + "<p>deep</p>" + "</div>" * 300
    with pytest.raises(RenderError, match=r"open-models-weekly\.md: variant all: .*incomplete"):
        renderer.render(deep)
    story.body_html = "<div>" * 40 + "<p>deep</p>" + "</div>" * 40
    email = renderer.render(deep)
    assert email.html.count("%%unsubscribe_url%%") == 1 and "deep" in email.html


def test_an_email_without_an_unsubscribe_link_is_an_error(settings, example, tmp_path):
    folder = tmp_path / "email"
    folder.mkdir()
    original = (default_templates_dir() / "email" / "digest.mjml").read_text()
    (folder / "digest.mjml").write_text(original.replace("{{ links.unsubscribe_url }}", "#"))
    with pytest.raises(RenderError, match="HTML part has no unsubscribe link"):
        Renderer(settings.with_overrides(templates_dir=tmp_path)).render(example)


def test_links_filled_into_the_html_are_escaped(settings, example):
    hostile = settings.with_overrides(base_url='https://x.example/"><script>alert(1)</script>')
    variants = render_variants(Renderer(hostile), example, ["all"])
    message = Composer(hostile, example.slug, variants).message("k", Recipient(1, "a@example.org", None, "tok", "all"))
    assert "<script>alert" not in message.html
    assert 'href="https://x.example/&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;/u/tok"' in message.html
    assert 'https://x.example/"><script>alert(1)</script>/u/tok' in message.text  # text is not HTML

