"""Footnote definitions (`[^label]: [Title](URL)` and an indented `> quote`), taken out of the
token stream wherever the writer put them."""

from __future__ import annotations

from markdown_it.token import Token

from .. import plaintext
from ..errors import shorten
from .checks import Checker
from .markdown import to_html
from .model import Footnote


def take_footnotes(tokens: list[Token], env, check: Checker
                    ) -> tuple[list[Token], dict[str, Footnote]]:
    """Pull every footnote definition out of the token stream, wherever the writer put it."""
    main: list[Token] = []
    notes: dict[str, Footnote] = {}
    lines: dict[str, int] = {}
    label, inside, line = None, [], 0
    for token in tokens:
        if token.type == "footnote_reference_open":
            label, inside, line = token.meta["label"], [], check.line_at(token.map[0]) if token.map else 0
        elif token.type == "footnote_reference_close" and label is not None:
            if label in lines:
                check.error(line, f"footnote [^{shorten(label)}] is defined twice (first on line {lines[label]})")
            else:
                lines[label] = line
                note = _footnote(label, inside, env, line, check)
                if note:
                    notes[label] = note
            label = None
        elif label is not None:
            inside.append(token)
        else:
            main.append(token)
    return main, notes


def _footnote(label: str, tokens: list[Token], env, line: int, check: Checker) -> Footnote | None:
    first_inline = next((t for t in tokens if t.type == "inline"), None)
    children = first_inline.children if first_inline else []
    link = next((c for c in children or [] if c.type == "link_open"), None)
    if link is None or not str(link.attrGet("href") or "").strip():
        check.error(line, f"footnote [^{shorten(label)}] has no source link; "
                    f"write [^{shorten(label)}]: [Source title](https://...)")
        return None
    idx = children.index(link)
    close = next(i for i in range(idx, len(children)) if children[i].type == "link_close")
    title = "".join(c.content for c in children[idx + 1:close] if c.type in ("text", "code_inline"))
    quote_tokens = _between(tokens, "blockquote_open", "blockquote_close")
    if any(t.type == "footnote_ref" for t in tokens if t.type == "inline" for t in t.children or []):
        check.error(line, f"footnote [^{shorten(label)}] cites a note; a note cannot cite another note")
        return None
    blocks = sum(1 for t in tokens if t.nesting == 1 and t.level == tokens[0].level)
    if blocks > 1 + bool(quote_tokens):
        check.warn(line, f"footnote [^{shorten(label)}]: only its first paragraph (the source link) and its "
                   "quote are shown; the rest of the note is left out")
    quote_inlines = [t for t in quote_tokens if t.type == "inline"]
    return Footnote(
        label=label, url=str(link.attrGet("href")), title=title.strip() or str(link.attrGet("href")),
        source_text="".join(c.content for c in children if c.type in ("text", "code_inline")).strip(),
        source_html=to_html([t for t in children if t.type != "footnote_anchor"], env, line, check),
        quote_html="<br>".join(to_html(t.children or [], env, check.line_at(t.map[0]) if t.map else line,
                                     check) for t in quote_inlines),
        quote_text=" ".join(plaintext.inline(t.children or []) for t in quote_inlines),
        line=line,
    )


def _between(tokens: list[Token], open_type: str, close_type: str) -> list[Token]:
    start = next((i for i, t in enumerate(tokens) if t.type == open_type), None)
    if start is None:
        return []
    depth = 0
    for i in range(start, len(tokens)):
        depth += {open_type: 1, close_type: -1}.get(tokens[i].type, 0)
        if depth == 0:
            return tokens[start + 1:i]
    return tokens[start + 1:]
