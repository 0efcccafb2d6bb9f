"""A digest file (Markdown with YAML front matter) becomes a `Digest`.

    model.py       the `Digest` and its parts: sections, round-up items, footnotes
    parse.py       the file read into that structure (`load_digest`, `parse_digest`)
    markdown.py    the markdown-it setup and the HTML it renders for email
    footnotes.py   note definitions taken out of the text
    checks.py      `Checker` and the checks that need the whole body
"""

from ..rawhtml import LINK_STYLE  # render.py styles its references to match
from .checks import Checker
from .model import REF_CLOSE, REF_OPEN, REF_RE, Digest, Footnote, RoundupItem, Section
from .parse import Source, load_digest, parse_digest, read_source

__all__ = ["LINK_STYLE", "REF_CLOSE", "REF_OPEN", "REF_RE", "Checker", "Digest", "Footnote", "RoundupItem",
           "Section", "Source", "load_digest", "parse_digest", "read_source"]
