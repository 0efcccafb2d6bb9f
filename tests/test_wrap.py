"""The plain-text part's wrapping is textwrap's, line for line, only faster (newsletter/plaintext.py)."""

import random
import textwrap

import pytest

from newsletter.plaintext import fill, wrap, wrap_line

# Words, URLs, hyphens and every kind of white space textwrap treats in its own way.
ODD = ["a", "bb", "word", "longerword", "x" * 30, "x" * 90, " ", "  ", "\t", "\u00a0", "\u2003",
       " \u00a0 ", "-", "a-b", "http://example.com/a-b-c-d", "é", "日本語", "\x0b", "\x0c", "\r",
       "\u3000", "\x1c", "\x85"]
# Prose: words one space apart, around the widths a line can have.
PROSE = ["a", "bb", "word", "Wörter", "x" * 19, "x" * 20, "x" * 21, "x" * 77, "x" * 78, "x" * 79,
         "x" * 200, "“quoted”", " ", " ", " ", " "]


@pytest.mark.parametrize("pieces", [ODD, PROSE], ids=["odd white space", "prose"])
def test_lines_are_textwraps_lines(pieces):
    rng = random.Random(7)
    for _ in range(20000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 50)))
        width = rng.choice([1, 2, 5, 10, 19, 20, 21, 40, 77, 78])
        expected = textwrap.wrap(text, width=width, expand_tabs=False, replace_whitespace=False,
                                 break_long_words=False, break_on_hyphens=False)
        assert wrap_line(text, width) == expected, (text, width)


def test_a_width_below_one_is_refused_like_textwrap():
    with pytest.raises(ValueError):
        wrap_line("word", 0)


def test_wrap_puts_its_prefixes_before_the_lines():
    text = "one two three " * 10
    assert wrap(text.strip(), "- ", "  ").split("\n") == \
        ["- " + line if n == 0 else "  " + line
         for n, line in enumerate(textwrap.wrap(text, 76, break_long_words=False, break_on_hyphens=False))]


def test_fill_wraps_paragraph_lines_underlines_headings_and_keeps_other_lines():
    body = "\n".join(["\x1f> \x1f> \x1f" + "quoted words " * 12,
                      "    code()   stays  ",
                      "\x1f\x1f\x1fA HEADING\x1f-"])
    lines = fill(body, "  ").split("\n")
    assert all(line.startswith("  > ") and len(line) <= 78 for line in lines[:3])
    assert lines[3:] == ["      code()   stays", "  A HEADING", "-" * 11, ""]
