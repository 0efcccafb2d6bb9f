r"""markdown-it tokens become the readable plain-text part of the email.

A body is not wrapped here: footnote references are still `[\x02label\x03]`, and a variant
numbers them `[n]` later, so a line wrapped now would come out short or long. Instead each
paragraph is one line, `\x1fFIRST\x1fREST\x1fTEXT` (FIRST is put before its first line, REST before
the others), and a heading adds `\x1f-`, the character that underlines it. The `fill` macro of
templates/email/wrap.txt wraps them at 78 columns once the numbers are in. Other lines (code,
rules, blank lines of a quote) are kept as they are. Digest text never holds \x1f: the checks
refuse control characters.
"""

from __future__ import annotations

from markdown_it.token import Token

FIELD = "\x1f"


def inline(children: list[Token]) -> str:
    """Inline tokens as text: links keep their URL, footnote references keep their placeholder."""
    out: list[str] = []
    links: list[tuple[str, int]] = []
    for token in children:
        kind = token.type
        if kind in ("text", "code_inline", "html_inline"):
            out.append("" if kind == "html_inline" else token.content)
        elif kind == "softbreak":
            out.append(" ")
        elif kind == "hardbreak":
            out.append("\n")
        elif kind == "link_open":
            links.append((str(token.attrGet("href") or ""), len(out)))
        elif kind == "link_close" and links:
            href, start = links.pop()
            label = "".join(out[start:])
            if href and href != label and not href.startswith("#"):
                out.append(f" <{href}>")
        elif kind == "image":
            alt = inline(token.children or [])
            out.append(f"[Image: {alt}]" if alt else "[Image]")
        elif kind == "footnote_ref":
            out.append(f"[\x02{token.meta['label']}\x03]")
    return "".join(out)


def blocks(tokens: list[Token]) -> str:
    """Block tokens as wrapped paragraphs, lists with markers, quotes with '> '."""
    paragraphs: list[tuple[str, bool]] = []  # (text, is a tight list item)
    prefixes: list[str] = []  # one entry per open list item or blockquote
    counters: list[int | None] = []  # ordered list numbers, None for bullets
    first_line_prefix: str | None = None
    for i, token in enumerate(tokens):
        kind = token.type
        if kind == "bullet_list_open":
            counters.append(None)
        elif kind == "ordered_list_open":
            counters.append(int(token.attrGet("start") or 1))
        elif kind in ("bullet_list_close", "ordered_list_close"):
            counters.pop()
        elif kind == "list_item_open":
            number = counters[-1]
            marker = "- " if number is None else f"{number}. "
            if number is not None:
                counters[-1] = number + 1
            first_line_prefix = "".join(prefixes) + marker
            prefixes.append(" " * len(marker))
        elif kind == "list_item_close":
            prefixes.pop()
        elif kind == "blockquote_open":
            prefixes.append("> ")
        elif kind == "blockquote_close":
            prefixes.pop()
        elif kind == "inline":
            text = inline(token.children or [])
            parent = tokens[i - 1].type if i else ""
            if parent == "heading_open":
                text = text.upper() if tokens[i - 1].tag in ("h1", "h2") else text
                paragraphs.append((_wrap(text, "".join(prefixes), underline="-"), False))
            else:
                # markdown-it hides the paragraphs of a tight list: those items sit line by line.
                tight = parent == "paragraph_open" and tokens[i - 1].hidden
                paragraphs.append((_wrap(text, "".join(prefixes), first_line_prefix), tight))
            first_line_prefix = None
        elif kind in ("fence", "code_block"):
            indent = "".join(prefixes) + "    "
            code = token.content.rstrip("\n").split("\n")
            paragraphs.append(("\n".join(indent + line for line in code), False))
        elif kind == "hr":
            paragraphs.append(("".join(prefixes) + "* * *", False))
    return _join(paragraphs)


def _wrap(text: str, indent: str, first: str | None = None, underline: str = "") -> str:
    """Each line of `text` as a paragraph for the template to wrap (see the module docstring)."""
    parts = text.split("\n")
    lines = []
    for n, part in enumerate(parts):
        lead = first if first and n == 0 else indent
        mark = [underline] if underline and n == len(parts) - 1 else []
        lines.append(FIELD.join(["", lead, indent, part, *mark]) if part.strip() else lead.rstrip())
    return "\n".join(lines)


def _join(paragraphs: list[tuple[str, bool]]) -> str:
    out: list[str] = []
    previous_tight = False
    for text, tight in paragraphs:
        if out:
            out.append("\n" if tight and previous_tight else "\n\n")
        out.append(text)
        previous_tight = tight
    return "".join(out)
