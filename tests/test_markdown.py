"""The Markdown reader's shortcuts read every text as markdown-it would without them."""

import copy

import pytest

from newsletter.digest.markdown import MD, _markdown

from .conftest import ROOT

NOTES = ("\n\n[^a]: [A](https://a.example)\n[^b-2]: [B](https://b.example)\n[^c_3]: [C](https://c.example)\n"
         "[^x`y]: [X](https://x.example)\n")
CASES = [
    "Plain [^a] and [^b-2], then [^c_3].", "[^a](https://x.example)", "[^a][ref]\n\n[ref]: https://r.example",
    "[^a][]", "[^a] [^undefined] [^a b] [^] [^a", "![^a]", "![^a](i.png)", "[x [^a] y](https://u.example)",
    "[^a]]", "[[^a]]", "[^a`b`] `[^a]`", "*[^a]* **[^a]** _[^a]_ __[^a]__", "\\[^a] [\\^a]", "<[^a]>",
    "[^A] [^a.b] [^a:b] [^a&amp;]", "[^a]\n[^b-2]", "> quoted [^a]\n\n- listed [^b-2]",
    "[" * 30 + "[^a]" + "]" * 30, "*" * 25 + "[^a]" + "*" * 25,
    "[a [b [c [^a] d](https://u) e](https://u) f](https://u)", "[^a](<x> \"t\") [^a] (x)",
    "[^a]" * 50, "[^x`y]`](https://u.example) and [^x`y] alone",  # a code span inside: a link
]


def tokens(md, text: str, env: dict) -> list[dict]:
    return [t.as_dict() for t in md.parse(text, env)]


@pytest.fixture(scope="module")
def without_shortcut():
    md = _markdown()
    md.inline.ruler.disable("footnote_ref_first")
    return md


@pytest.mark.parametrize("text", CASES)
def test_plain_references_read_as_without_the_shortcut(without_shortcut, text):
    for env in ({}, {"references": {"^A": {"href": "https://r.example", "title": ""}}}):
        expected_env, env = copy.deepcopy(env), copy.deepcopy(env)
        assert tokens(MD, text + NOTES, env) == tokens(without_shortcut, text + NOTES, expected_env)
        assert env == expected_env


def test_the_digests_read_as_without_the_shortcut(without_shortcut):
    for path in sorted((ROOT / "digests").glob("*.md")):
        text = path.read_text(encoding="utf-8")
        assert tokens(MD, text, {}) == tokens(without_shortcut, text, {})
