"""The Markdown reader (markdown-it with footnotes) and the HTML it renders for email.

Footnote references render as placeholders (`\\x02label\\x03`) that `render.py` numbers per variant;
every fragment then goes through the raw-HTML allow-list (`rawhtml.py`).
"""

from __future__ import annotations

import re
from functools import partial
from typing import TYPE_CHECKING

from markdown_it import MarkdownIt
from markdown_it.common.utils import normalizeReference
from markdown_it.token import Token
from mdit_py_plugins.footnote import footnote_plugin

from .. import rawhtml
from .model import REF_CLOSE, REF_OPEN

if TYPE_CHECKING:
    from .checks import Checker

LABEL_END_RE = re.compile(r"[\] \n]")
PLAIN_LABEL_RE = re.compile(r"[A-Za-z0-9_-]{1,999}\]")
MAX_LABEL = 999


def _markdown() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"typographer": True}).enable(["replacements", "smartquotes"])
    md.validateLink = lambda url: True  # [x](javascript:...) stays a link, for check to refuse
    md.use(footnote_plugin, inline=False)  # ^[inline notes] have no label to cite them by
    md.core.ruler.disable("footnote_tail")  # keeps every definition in place, cited or not
    footnote_ref = next(rule.fn for rule in md.inline.ruler.__rules__ if rule.name == "footnote_ref")
    md.inline.ruler.at("footnote_ref", partial(_bounded_footnote_ref, footnote_ref))
    md.inline.ruler.before("link", "footnote_ref_first", partial(_plain_footnote_ref, footnote_ref))
    rules = md.add_render_rule
    rules("footnote_ref", lambda self, tokens, idx, options, env:
          f"{REF_OPEN}{tokens[idx].meta['label']}{REF_CLOSE}")
    rules("html_block", lambda self, tokens, idx, options, env:
          "" if tokens[idx].content.lstrip().startswith("<!--") else tokens[idx].content)
    rules("image", _render_image)
    rules("blockquote_open", lambda *a: '<blockquote class="pull">\n')
    return md


def _bounded_footnote_ref(footnote_ref, state, silent: bool) -> bool:
    """The plugin's rule looks for the `]` after every `[^` however far away it is: time
    quadratic in a run of `[^`. A label is never longer than a link label's 999 characters."""
    start = state.pos
    if state.src.startswith("[^", start):
        end = LABEL_END_RE.search(state.src, start + 2, min(state.posMax, start + 2 + MAX_LABEL + 1))
        if end is None or end.group() != "]":
            return False
    return footnote_ref(state, silent)


def _plain_footnote_ref(footnote_ref, state, silent: bool) -> bool:
    """A plain `[^label]` read before the link rule tries it as a link, which it cannot be, and which
    costs the link rule a scan of the label that runs every inline rule at each character.

    What this rule takes, the rules before `footnote_ref` would all have refused: the label is
    letters, digits, `-` and `_` (no inline rule takes one of them, so the link rule's scan would
    end at the same `]`), no `(` or `[` follows it, and no link reference is defined for it. So
    every reference is read as before; a `[^label]` that could be a link is left to the link rule.
    """
    start = state.pos
    if not state.src.startswith("[^", start):
        return False
    match = PLAIN_LABEL_RE.match(state.src, start + 2, state.posMax)
    if match is None or state.level + 1 >= state.md.options["maxNesting"]:
        return False
    after = match.end()  # just past the "]"
    if after < state.posMax and state.src[after] in "([":
        return False
    if normalizeReference(state.src[start + 1:after - 1]) in state.env.get("references", ()):
        return False
    return footnote_ref(state, silent)


def _render_image(self, tokens, idx, options, env) -> str:
    token = tokens[idx]
    alt = self.renderInlineAsText(token.children or [], options, env)
    src = _escape(token.attrGet("src") or "")
    # The email codes the image at its column's width (render.py knows the layout, not the digest).
    return f'<img class="img" src="{src}" alt="{_escape(alt)}">'


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


MD = _markdown()


def to_html(tokens: list[Token], env, line: int, check: Checker) -> str:
    """Tokens (blocks, or one line's inline tokens starting on `line`) as HTML fit for email:
    raw HTML through the allow-list, what it removes reported, nesting kept shallow enough that
    no parser on the way cuts the email short."""
    if not rawhtml.Inspection(line, check).run(tokens):
        return ""  # an error; and too deep for the sanitizer, whose time grows with depth squared
    cleaned = rawhtml.clean(MD.renderer.render(tokens, MD.options, env))
    # What browsers build can nest deeper than the tags counted (tables get rows and bodies).
    # Every tag starts with a "<", so a fragment with few of them (most) needs no count.
    if cleaned.count("<") > rawhtml.MAX_DEPTH and rawhtml.depth(cleaned) > rawhtml.MAX_DEPTH:
        check.error(line, rawhtml.too_deep())
        return ""
    return cleaned
