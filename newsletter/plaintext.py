r"""markdown-it tokens become the readable plain-text part of the email.

A body is not wrapped here: footnote references are still `[\x02label\x03]`, and a variant
numbers them `[n]` later, so a line wrapped now would come out short or long. Instead each
paragraph is one line, `\x1fFIRST\x1fREST\x1fTEXT` (FIRST is put before its first line, REST before
the others), and a heading adds `\x1f-`, the character that underlines it. `fill` wraps them at
78 columns once the numbers are in (templates/email/digest.txt calls it, and `wrap` for one-line
texts). Other lines (code, rules, blank lines of a quote) are kept as they are. Digest text never
holds \x1f: the checks refuse control characters.

Words are never split, neither at a hyphen nor inside a URL: a word longer than the line stands on a
line of its own. The wrapping is Jinja's `wordwrap` filter with `break_long_words` and
`break_on_hyphens` off, called from Python: a template loop over every line cost more than the rest
of the plain-text part together.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from itertools import accumulate

from markdown_it.token import Token

FIELD = "\x1f"
WIDTH = 78


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


# -- wrapping, once footnote references are numbered ------------------------------------------------

SEPARATOR_RE = re.compile(r"([\t\n\x0b\x0c\r ]+)")  # how textwrap splits when hyphens are not breaks
UNUSUAL_SPACE_RE = re.compile(r"[^\S ]|  ")  # any white space but single spaces between words


def wrap_line(text: str, width: int) -> list[str]:
    """`textwrap.wrap(text, width, expand_tabs=False, replace_whitespace=False,
    break_long_words=False, break_on_hyphens=False)`, line for line: the same greedy rule, with
    each line's chunks found by a search in their running lengths instead of one at a time."""
    if width <= 0:
        raise ValueError(f"invalid width {width!r} (must be > 0)")
    if text[:1] != " " and text[-1:] != " " and not UNUSUAL_SPACE_RE.search(text):
        return _words_apart(text, width)
    chunks = [chunk for chunk in SEPARATOR_RE.split(text) if chunk]
    ends = list(accumulate(map(len, chunks)))  # ends[k]: the length of chunks[:k + 1]
    lines: list[str] = []
    count, start = len(chunks), 0
    while start < count:
        if lines and not chunks[start].strip():  # whitespace never starts a line but the first
            start += 1
            if start == count:
                break
        before = ends[start - 1] if start else 0
        stop = bisect_right(ends, before + width, start)  # the chunks that fit
        if stop == start:  # a word longer than the line stands on a line of its own
            stop += 1
        end = stop - 1 if not chunks[stop - 1].strip() else stop  # nor does it end one
        if end > start:
            lines.append("".join(chunks[start:end]))
        start = stop
    return lines


def _words_apart(text: str, width: int) -> list[str]:
    """`wrap_line` for the usual text: words one space apart, none before the first or after the
    last. Each line ends at the last space that keeps it within `width`, or, for a longer word,
    at the first space after it."""
    lines: list[str] = []
    start, size = 0, len(text)
    while size - start > width:
        end = text.rfind(" ", start + 1, start + width + 1)
        if end < 0:
            end = text.find(" ", start + width + 1)
            if end < 0:
                break
        lines.append(text[start:end])
        start = end + 1
    if start < size:
        lines.append(text[start:])
    return lines


def wordwrap(text: str, width: int, wrapstring: str) -> str:
    """Jinja's `wordwrap(width, false, wrapstring, false)`: each line of `text` wrapped on its
    own, long words and hyphens never broken, the wrapped lines joined with `wrapstring`."""
    return wrapstring.join([wrapstring.join(wrap_line(line, width)) for line in text.splitlines()])


def wrap(text: str, first: str = "", rest: str = "") -> str:
    """`text` wrapped at 78 columns, `first` before its first line and `rest` before the others."""
    return first + wordwrap(text, WIDTH - max(len(first), len(rest)), "\n" + rest)


def fill(body: str, indent: str = "") -> str:
    """A body made by `blocks`, its paragraphs wrapped at 78 columns and headings underlined;
    `indent` goes before every line (round-up items). Every line ends with a newline."""
    out: list[str] = []
    for line in body.split("\n"):
        field = line.split(FIELD)
        if len(field) < 4:
            out.append((indent + line).rstrip())
            continue
        rest = indent + field[2]
        lines = indent + field[1] + wordwrap(field[3], max(WIDTH - len(rest), 20), "\n" + rest)
        out.append(lines)
        if len(field) > 4:
            out.append(field[4] * min(max(map(len, lines.split("\n"))), WIDTH))
    return "".join(line + "\n" for line in out)
