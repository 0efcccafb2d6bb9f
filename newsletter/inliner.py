"""The CSS of inline.css moved into style attributes: premailer's result, most of its work done once.

premailer, for every email, turns the stylesheet into rules, runs each rule's selector over the
whole document, merges each styled element's declarations through cssutils, and parses the
style of every image with cssutils to look for a float. All of that but the matching depends only
on the CSS text and on a few strings that repeat from email to email, so an `Inliner` keeps it:

- the rules, sorted, each with its declarations already split into pairs;
- the matching: selectors made of tags and classes, alone or joined by ` ` and `>` (all of ours),
  are matched from one index of the document by tag and by class, then top down through lxml's
  children and descendants; cssselect's XPath, one run over the document each, only for the rest;
- the merged style and the HTML attributes it implies, per (style already there, rules matched);
- the float of each distinct image style.

The output is premailer's, byte for byte, for the options `Inliner` passes it (see `OPTIONS`):
tests/test_inliner.py compares the two. A document with a <style> block that is not marked
`data-premailer="ignore"` (render.compile marks MJML's own) goes through premailer itself.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import cssutils
from lxml import etree
from lxml.cssselect import CSSSelector
from premailer import Premailer
from premailer.merge_style import csstext_to_pairs, merge_styles
from premailer.premailer import FILTER_PSEUDOSELECTORS, get_or_create_head

OPTIONS: dict[str, Any] = dict(
    allow_network=False, keep_style_tags=False, strip_important=False, remove_classes=False,
    disable_validation=True, cssutils_logging_level=logging.CRITICAL, cache_css_parsing=True,
    # CSS width/height never become attributes: height="auto" is invalid, and an image keeps the
    # pixel width it is coded at (Outlook for Windows draws it at that width).
    disable_basic_attributes=["width", "height"],
)
# `tag`, `.class`, `tag.class.other`, and chains of them joined by ` ` or ` > `: matched from the
# index of the email by tag and class (`Inliner._match`), without cssselect's XPath.
COMPOUND = r"[a-zA-Z][a-zA-Z0-9]*(?:\.[a-zA-Z_][a-zA-Z0-9_-]*)*|(?:\.[a-zA-Z_][a-zA-Z0-9_-]*)+"
COMBINATOR = r"[ \t\r\n\f]*>[ \t\r\n\f]*|[ \t\r\n\f]+"  # CSS whitespace, as cssselect reads it
CHAIN_RE = re.compile(rf"(?:{COMPOUND})(?:(?:{COMBINATOR})(?:{COMPOUND}))*")
PART_RE = re.compile(rf"({COMBINATOR})?({COMPOUND})")
XPATH_SPACE_RE = re.compile("[ \t\r\n]+")  # what XPath's normalize-space() takes for a space
STYLE = CSSSelector("style")
WITH_CLASS = etree.XPath("descendant-or-self::*[@class]")
NO_CLASS: frozenset = frozenset()
MAX_CACHED = 4096  # merged styles and image floats; a few hundred in practice


class _Premailer(Premailer):
    """premailer, with the parsed rules of a stylesheet kept between emails (they depend only on
    the CSS text and the options): the fallback, and where `Inliner` gets its rules."""

    _rules: dict[tuple, tuple] = {}

    def _parse_style_rules(self, css_body, ruleset_index):
        key = (css_body, ruleset_index, self.strip_important, self.disable_validation)
        if key not in self._rules:
            self._rules[key] = super()._parse_style_rules(css_body, ruleset_index)
        rules, leftover = self._rules[key]
        return list(rules), list(leftover)


class _Rule:
    """One selector of the stylesheet, its declarations as pairs, and how to find its elements."""

    def __init__(self, selector: str, bulk: str, validate: bool):
        # As premailer.transform: `a:hover` keeps its pseudo-class apart, `li:first-child` is a filter.
        pseudo = ""
        if ":" in selector:
            plain, pseudo = selector.split(":", 1)
            pseudo = f":{pseudo}"
            if pseudo in FILTER_PSEUDOSELECTORS or pseudo.startswith(":nth-child"):
                pseudo = ""
            else:
                selector = plain
        self.pseudo = pseudo
        self.pairs = csstext_to_pairs(bulk, validate=validate)
        self.xpath = None if CHAIN_RE.fullmatch(selector) else CSSSelector(selector)
        # (" " or ">": how it relates to the one before, tag, classes) per compound selector.
        self.steps = [(">" if ">" in (m.group(1) or "") else " ", *_compound(m.group(2)))
                      for m in PART_RE.finditer(selector)] if self.xpath is None else []

    def matches(self, page, tags: dict[str, list], classes: dict[Any, frozenset]) -> list:
        if self.xpath is not None:
            return self.xpath(page)
        # Top down: the elements that match the first compound, then their children or
        # descendants that match the next, and so on (each once, however deep they nest).
        _, tag, names = self.steps[0]
        found = [e for e in tags.get(tag or f".{next(iter(names))}", []) if names <= classes.get(e, NO_CLASS)]
        for combinator, tag, names in self.steps[1:]:
            below = (e.iterchildren(tag or etree.Element) if combinator == ">" else
                     e.iterdescendants(tag or etree.Element) for e in found)
            found = list(dict.fromkeys(d for group in below for d in group
                                       if names <= classes.get(d, NO_CLASS)))
        return found


def _compound(text: str) -> tuple[str | None, frozenset]:
    tag, *names = text.split(".")
    return tag or None, frozenset(names)


class Inliner:
    """Inlines one stylesheet into many emails; keep one per CSS text (`for_css`)."""

    _made: dict[str, Inliner] = {}

    @classmethod
    def for_css(cls, css: str) -> Inliner:
        made = cls._made.get(css)
        if made is None:
            made = cls._made[css] = cls(css)
        return made

    def __init__(self, css: str):
        self.css = css
        self.premailer = _Premailer(css_text=css, **OPTIONS)
        rules, self.leftover = self.premailer._parse_style_rules(css, 0)
        rules.sort(key=lambda rule: rule[0])
        validate = not self.premailer.disable_validation
        self.rules = [_Rule(selector, bulk, validate) for _, selector, bulk in rules]
        self.tags = sorted({rule.steps[0][1] for rule in self.rules if rule.steps and rule.steps[0][1]}) \
            or ["-"]  # "-": no element has that tag
        self.merged: dict[tuple, tuple[str, list[tuple[str, str]]]] = {}
        self.floats: dict[str, str] = {}

    def inline(self, html: str) -> str:
        """The HTML with the stylesheet moved into style attributes, as premailer would make it."""
        stripped = html.strip()
        tree = etree.fromstring(stripped, etree.HTMLParser()).getroottree()
        page = tree.getroot()
        # lxml adds a doctype; premailer keeps it only where the original starts with it exactly.
        root = tree if stripped.startswith(tree.docinfo.doctype) else page
        head = get_or_create_head(tree)
        for element in STYLE(page):
            media = element.attrib.get("media")
            if media and media not in ("all", "screen"):
                continue
            if element.attrib.get(Premailer.attribute_name) != "ignore":
                return self.premailer.transform(html, pretty_print=False)
            del element.attrib[Premailer.attribute_name]
        if self.leftover:
            style = etree.Element("style")
            style.attrib["type"] = "text/css"
            style.text = self.premailer._css_rules_to_string(self.leftover)
            head.append(style)
        self._apply(self._match(page))
        self._align_floating_images(page)
        return etree.tostring(root, method="html", pretty_print=False, encoding="utf-8").decode("utf-8")

    def _match(self, page) -> dict[Any, list[int]]:
        """Each styled element with the numbers of its rules, in the order they apply."""
        tags: dict[str, list] = {}  # tag name or .class -> elements in document order
        for element in page.iter(*self.tags):
            tags.setdefault(element.tag, []).append(element)
        classes: dict[Any, frozenset] = {}
        for element in WITH_CLASS(page):
            names = frozenset(XPATH_SPACE_RE.split(element.get("class").strip(" \t\r\n")))
            classes[element] = names
            for name in names:
                tags.setdefault(f".{name}", []).append(element)
        styled: dict[Any, list[int]] = {}
        for number, rule in enumerate(self.rules):
            for element in rule.matches(page, tags, classes):
                styled.setdefault(element, []).append(number)
        return styled

    def _apply(self, styled: dict[Any, list[int]]) -> None:
        for element, numbers in styled.items():
            key = (element.attrib.get("style", ""), tuple(numbers))
            merged = self.merged.get(key)
            if merged is None:  # read and written once each: safe for threads sharing the inliner
                merged = self._merge(*key)
                if len(self.merged) > MAX_CACHED:
                    self.merged.clear()
                self.merged[key] = merged
            final, attributes = merged
            if final:
                element.attrib["style"] = final
            for name, value in attributes:
                element.attrib[name] = value

    def _merge(self, style: str, numbers: tuple[int, ...]) -> tuple[str, list[tuple[str, str]]]:
        rules = [self.rules[n] for n in numbers]
        final = merge_styles(style, [r.pairs for r in rules], [r.pseudo for r in rules],
                             remove_unset_properties=self.premailer.remove_unset_properties)
        scratch = etree.Element("scratch")  # what premailer sets from the style: align, bgcolor, ...
        self.premailer._style_to_basic_html_attributes(scratch, final, force=True)
        return final, list(scratch.attrib.items())

    def _align_floating_images(self, page) -> None:
        # Outlook understands align=, not float: premailer reads each image's style with cssutils.
        for image in page.xpath("//img[@style]"):
            style = image.attrib["style"]
            float_ = self.floats.get(style)
            if float_ is None:
                float_ = cssutils.parseStyle(style).float
                if len(self.floats) > MAX_CACHED:
                    self.floats.clear()
                self.floats[style] = float_
            if float_ in ("right", "left"):
                image.attrib["align"] = float_
