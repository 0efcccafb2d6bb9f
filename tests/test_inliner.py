"""The inliner gives premailer's output byte for byte, with the work that depends only on the CSS
done once: on the example's emails and on documents made to reach every branch of premailer's."""

import pytest
from premailer import Premailer

from newsletter.inliner import OPTIONS, Inliner
from newsletter.render import select

CSS = """
h1 { color: #111; font-size: 30px; }
p { margin: 0 0 14px; }
p.lead { font-size: 18px; text-align: center; }
.note { margin: 0 0 12px; background-color: #abc; }
.note.quote { font-style: italic; }
.box { width: 300px; height: 20px; vertical-align: top; background-color: transparent; }
img.img { display: block; float: right; border: 0; }
img.left { float: left; }
blockquote.pull p { margin: 0; }
.item > h3 { margin: 0 0 2px; }
.footer a { color: #5b6470; }
body .item div > h3 { letter-spacing: 1px; }
ul > li.x, div.item  >  div h3 { padding: 0; }
a:hover { color: red; }
li:first-child { margin-top: 0; }
li:nth-child(2) { margin-top: 2px; }
.gone { color: unset; }
.strong { color: blue !important; font-weight: 700; }
* { box-sizing: border-box; }
@media (max-width: 480px) { .note { margin: 0; } }
"""

DOCUMENT = """<!doctype html>
<html><head><title>t</title>
<style data-premailer="ignore">.x { color: red; }</style>
<style media="print">.y { color: blue; }</style>
</head><body>
<h1 style="color: #222">Title</h1>
<p class="lead">Lead</p><p class=" note\tquote\n">Quote</p><p class="note" style="margin: 1px">n</p>
<div class="box">box</div><img class="img" src="a.png"><img class="left img" style="border: 1px" src="b.png">
<blockquote class="pull"><p>pulled</p></blockquote>
<div class="item"><h3>item</h3><div><h3>deeper</h3></div></div>
<ul><li>one</li><li class="x">two</li><li>three</li></ul>
<p class="gone strong">unset</p>
<div class="footer"><a href="#x">link</a> <a href="#y" style="font-weight: 600">other</a></div>
<p class="notes">not .note</p><p class="NOTE">case</p>
</body></html>"""


def premailer(html: str, css: str) -> str:
    return Premailer(html, css_text=css, **OPTIONS).transform(pretty_print=False)


@pytest.mark.parametrize("html", [
    DOCUMENT,
    DOCUMENT.replace("<!doctype html>\n", ""),
    DOCUMENT.replace("<head><title>t</title>", "<head><title>t</title><style>p { color: green; }</style>"),
    "<html><body><p class='lead'>no head</p><img class='img' src='c.png'></body></html>",
], ids=["document", "no doctype", "a style block of its own", "no head"])
def test_same_as_premailer(html):
    expected = premailer(html, CSS)
    assert Inliner(CSS).inline(html) == expected
    assert Inliner(CSS).inline(html) == expected, "and again, from what it kept of the first"


def test_every_rule_of_the_document_styles_something():
    """So that the comparison above covers each kind of selector."""
    html = Inliner(CSS).inline(DOCUMENT)
    for value in ("font-size:18px", "font-style:italic", 'bgcolor="#aabbcc"', "width:300px",
                  'valign="top"', 'align="right"', 'align="left"', "margin:0 0 2px", "color:#5b6470",
                  "margin-top:0", "margin-top:2px", "letter-spacing:1px", "padding:0", "color:blue !important", "a:hover"):
        assert value in html, value
    assert "color:unset" not in html
    assert 'width="300"' not in html, "CSS width and height never become attributes (OPTIONS)"


@pytest.mark.parametrize("categories", [None, ["ai-research"], ["essays"], []])
def test_the_example_emails_as_premailer_makes_them(renderer, example, categories):
    compiled = renderer.compile(renderer.mjml(select(example, categories)))
    assert Inliner.for_css(renderer.css).inline(compiled) == premailer(compiled, renderer.css)
