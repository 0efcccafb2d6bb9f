"""A digest's front matter: the YAML between its first two '---' lines, read once and safely,
with the line of every key, and the checks on the values that reach headers and the email."""

from __future__ import annotations

import datetime as dt
import re
from typing import TYPE_CHECKING, Any, Callable

import yaml

from .errors import shorten

if TYPE_CHECKING:
    from .digest import Checker

# libyaml when PyYAML was built with it: about 16 times faster than the pure-Python loader.
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
NULL_TAG, STR_TAG = "tag:yaml.org,2002:null", "tag:yaml.org,2002:str"
DATE_RE = yaml.constructor.SafeConstructor.timestamp_regexp  # what YAML itself takes for a date

# Invisible characters that break the email (\x02 and \x03 mark footnote references inside us;
# MJML refuses most of the others). Tabs and line ends are text.
CONTROL_RE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
LINE_BREAK_RE = re.compile("[\n\u2028\u2029]")
BIDI_RE = re.compile("[\u202a-\u202e\u2066-\u2069]")


class FrontMatterLoader(YAML_LOADER):  # type: ignore[misc, valid-type]
    """Reads every plain value as the text the writer typed (`title: yes`, `title: 2026-01-01`,
    `.nan`, `12:30`), empty and `null` as nothing. Every front-matter key holds text or a list of
    text; YAML 1.1's guesses at booleans, numbers and dates only changed what the writer wrote,
    and an impossible date (2026-02-30) made the loader itself fail without a line."""

    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag == NULL_TAG]
        for first, resolvers in YAML_LOADER.yaml_implicit_resolvers.items()
    }

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, OverflowError) as e:  # an explicit tag: !!timestamp 2026-02-30
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {shorten(node.value if isinstance(node.value, str) else node.tag)} "
                f"as {node.tag.rsplit(':', 1)[-1]} ({shorten(e)})", node.start_mark) from None


def split(lines: list[str], check: Checker) -> tuple[str | None, int]:
    """The front matter's text (None: missing, an error) and the index of the body's first line."""
    if not lines or lines[0].strip() != "---":
        check.error(1, "no front matter: the file must start with a '---' line, then YAML, then '---'")
        return None, 0
    for i in range(1, len(lines)):
        if lines[i].strip() in ("---", "..."):
            return "\n".join(lines[1:i]), i + 1
    check.error(1, "front matter is not closed by a '---' line")
    return None, 0


def load(front: str, check: Checker) -> tuple[dict[str, Any], dict[str, int]] | None:
    """The values, and the line of each key ("tldr.0": of a list's items); None on an error."""
    loader = FrontMatterLoader(front)
    try:
        node = loader.get_single_node()  # parsed once: the nodes give lines, then the values
        if node is not None and not _check_nodes(node, check):
            return None
        meta = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        line = mark.line + 2 if mark is not None else 1
        if isinstance(e, yaml.reader.ReaderError):  # a character YAML refuses: at .position
            line = front.count("\n", 0, e.position) + 2
        problem = getattr(e, "problem", None) or getattr(e, "reason", None) or str(e).splitlines()[0]
        check.error(line, f"invalid front matter: {shorten(problem, 120)}")
        return None
    finally:
        loader.dispose()
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        check.error(2, "front matter must be 'key: value' lines")
        return None
    odd = [k for k, _ in node.value if k.tag != STR_TAG] if isinstance(node, yaml.MappingNode) else []
    if odd:  # `~: x`, `[a]: x`, `!!int 1: x`
        check.error(odd[0].start_mark.line + 2, "a front matter key must be a name such as 'title'")
        return None
    key_lines = {}
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode):
                key_lines[k.value] = k.start_mark.line + 2
                if isinstance(v, yaml.SequenceNode):  # each item's own line: "tldr.0", ...
                    key_lines |= {f"{k.value}.{i}": item.start_mark.line + 2 for i, item in enumerate(v.value)}
                elif isinstance(v, yaml.MappingNode):  # each entry's own line: "subjects.ai-tech", ...
                    key_lines |= {f"{k.value}.{child.value}": child.start_mark.line + 2
                                  for child, _ in v.value if isinstance(child, yaml.ScalarNode)}
    return meta, key_lines


def _check_nodes(root: yaml.Node, check: Checker) -> bool:
    """Refuse aliases (700 bytes of them expand to gigabytes) and keys given twice."""
    seen: set[int] = set()
    todo: list[tuple[yaml.Node, str, int]] = [(root, "", root.start_mark.line + 2)]
    fine = True
    while todo:  # depth first, in the order of the text: an alias comes after its anchor
        node, key, line = todo.pop()
        if id(node) in seen:  # the composer hands out an alias as the very node it names
            where = f"'{shorten(key)}' uses" if key else "the front matter uses"
            check.error(line, f"{where} a YAML alias (*name); aliases are not allowed in the "
                        "front matter")
            return False
        seen.add(id(node))
        children: list[tuple[yaml.Node, str, int]] = []
        if isinstance(node, yaml.MappingNode):
            first: dict[tuple[str, str], int] = {}
            for k, v in node.value:
                k_line = k.start_mark.line + 2
                name = key or (k.value if isinstance(k, yaml.ScalarNode) else "")
                if isinstance(k, yaml.ScalarNode):
                    if (k.tag, k.value) in first:
                        check.error(k_line, f"key '{shorten(k.value)}' is given twice in the front "
                                    f"matter (first on line {first[k.tag, k.value]})")
                        fine = False
                    first.setdefault((k.tag, k.value), k_line)
                children += [(k, name, k_line), (v, name, k_line)]
        elif isinstance(node, yaml.SequenceNode):
            children = [(item, key, line) for item in node.value]
        todo.extend(reversed(children))
    return fine


def text_field(meta: dict, key: str, line_of: Callable[[str], int], check: Checker) -> str:
    """A text value, stripped ("" when missing)."""
    value = meta.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):  # a list, a mapping, or a value given an explicit !!tag
        check.error(line_of(key), f"'{key}' must be text, got {_kind(value)}")
        return ""
    return clean_text(value.strip(), key, line_of(key), check)


def _kind(value: Any) -> str:
    return {list: "a list", dict: "key: value pairs"}.get(type(value), type(value).__name__)


def clean_text(text: str, key: str, line: int, check: Checker) -> str:
    """The text without control characters, each an error: they break the email, or worse."""
    found = CONTROL_RE.search(text)
    if found is None:
        return text
    check.error(line, f"'{key}' contains the control character {ascii(found.group())}; remove it")
    return CONTROL_RE.sub("", text)


def check_subject(title: str, line: int, check: Checker, key: str = "title") -> None:
    """The title is the subject: a header, one line long, that shows what it says."""
    if LINE_BREAK_RE.search(title):
        check.error(line, f"'{key}' is the subject line and cannot contain a line break")
    bidi = BIDI_RE.search(title)
    if bidi:
        check.warn(line, f"'{key}' contains the invisible bidirectional control U+{ord(bidi.group()):04X}, "
                   "which can make the subject read differently from what it is")


def date(value: Any, line: int, check: Checker) -> dt.date | None:
    """The issue's date: 2026-04-22, or a timestamp as YAML writes one (its day counts)."""
    if value is None or isinstance(value, dt.date):
        return value.date() if isinstance(value, dt.datetime) else value
    found = DATE_RE.match(value.strip()) if isinstance(value, str) else None
    if found is None:
        check.error(line, f"'date' must be a date like 2026-04-22, got {shorten(repr(value))}")
        return None
    try:
        return dt.date(int(found["year"]), int(found["month"]), int(found["day"]))
    except ValueError:
        check.error(line, f"'date' {shorten(value.strip())} is not a day of the calendar")
        return None


STATUSES = ("draft", "ready")


def status(value: Any, line: int, check: Checker) -> str:
    """Whether the writer says the issue may go out on schedule: `draft` (the default) or `ready`."""
    if value is None:
        return "draft"
    if not isinstance(value, str) or value.strip().lower() not in STATUSES:
        check.error(line, f"'status' must be draft or ready, got {shorten(repr(value))}")
        return "draft"
    return value.strip().lower()
