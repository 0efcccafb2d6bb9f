"""The example digest's emails, byte for byte: speed work on parsing and inlining must not change
what a reader gets.

The figures are the sha256 of each email's HTML and text as main rendered them before the render
speed work (December 2026), for every category set the render benchmark uses, with the notes after
each story and at the end. A change meant to alter the email (a template, the CSS, the Markdown
rendering) regenerates them: `python -m tests.test_render_golden` prints the new table.
"""

from __future__ import annotations

import hashlib

import pytest

from newsletter.config import load_settings
from newsletter.digest import Checker, load_digest, parse_digest
from newsletter.render import Renderer

from .conftest import EXAMPLE, ROOT

# The category sets of benchmarks/bench_render.py, and [] (a reader who chose none).
VARIANTS = [None, ["ai-research"], ["ai-tech"], ["ai-news"], ["essays"], ["ai-research", "ai-tech"],
            ["ai-news", "essays"], ["ai-research", "ai-tech", "ai-news", "essays"], []]
MODES = ("inline", "end")

GOLDEN = {
    "inline warnings": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "inline all html": "4a00139148c300c8fcc9efe5597ad12e7e07f5f710d55ba57d31a284ac93a5e0",
    "inline all text": "b1c3180cf4c2aa4dfc60902f778a6670d6dfcc2a906558f4b2b6a7ad042c7137",
    "inline ai-research html": "99c23375f9424e8632c2339594fa839285326a00a9cb0c937a3098963e1957ba",
    "inline ai-research text": "82c6b493f6c5a5e3df9fcf0842d4570a3dd06f4dff379f67fea83b1384cd7b51",
    "inline ai-tech html": "d598b657c08272af8e07838411e6ffbaab1bfe9f13fd91bbe9f271058309b741",
    "inline ai-tech text": "7ec750b50185e8d3780fffeb0e4b1e7fa550e159a848d8e4bd9b961172900247",
    "inline ai-news html": "9fffed6c6dd94b023e8b1b15b0cba48ecc22878407bcf79b1a3e42766775f235",
    "inline ai-news text": "6ba5b6338d8346b5dd3de32c9fa28860f440216b4e02de34336383fccfa7b0aa",
    "inline essays html": "31919849320d41b434c9d28c24af2afe904781d0574ceff04f9ad0be214495c0",
    "inline essays text": "116de14c752ee685c6c60a8091e8d2927a2d9c69fdd383dbcb7a9543e2903dd6",
    "inline ai-research+ai-tech html": "d038ca88f5ab2a1bf3bf40b119ac78cc31acd59cf29b3482ad6ee64dc9f23e81",
    "inline ai-research+ai-tech text": "d68e0c99615d74928f216879b770f3edeed30cc5e5560633ad118f6849402f85",
    "inline ai-news+essays html": "6a60b862994c46b8faff4a8dd0172ee2c4d4126d4bb7f265d293a1d99a6029f4",
    "inline ai-news+essays text": "d1f9c0a6572253c26aa3c46d4b48a9d029216c33282a21b4fd462b5a3bf2e1be",
    "inline ai-research+ai-tech+ai-news+essays html": "4a00139148c300c8fcc9efe5597ad12e7e07f5f710d55ba57d31a284ac93a5e0",
    "inline ai-research+ai-tech+ai-news+essays text": "b1c3180cf4c2aa4dfc60902f778a6670d6dfcc2a906558f4b2b6a7ad042c7137",
    "inline none html": "03ff70807c60a3d7d83c361eec8ad284d25db757d3e86d785f8115f7554871a2",
    "inline none text": "6592ddaed5b654d013659a04a5dfc8a859d3ed169f8e61e23890660870b8c8f1",
    "end warnings": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "end all html": "24b4fca42b307468e90485e63c4e284caf917efe5f92dcbbee4e8f6a227f4c1e",
    "end all text": "7594851fbbc230712ae4192a9b4dc0afcf5928d638f2b61a4234b9c4abcd9bf8",
    "end ai-research html": "f36a9aead30512c4507700f78466b0f1f3d643f1e071c1eb074de5b3076dfb26",
    "end ai-research text": "9582b8a5ba6cffac758a04f22c6e16f0e3138c2bccaaec151364d890d847eb21",
    "end ai-tech html": "fda6acdd9c7a6be6bd43e6ad9ea04c4180a455ae9278880f076ae74c82f91c10",
    "end ai-tech text": "5c09e1daab59681c417f2e80c0abe6f297da5ebf11bd287208c01ecec794fc3f",
    "end ai-news html": "81a77d888a4e42777b6e79a3196c6a020be41ed745d36e93ad5b263e3b8d4867",
    "end ai-news text": "77fa7e2804925ef66460e0ff52eab85e671785c1eb9dd75817606a6b556fe6fd",
    "end essays html": "b741c28431dc00f428e90a21543d4251972790d002b93823175d652ce010b3f2",
    "end essays text": "41b85a49055f0ffb6da120b85ea49449a1c82a76ce82163fb53836029bf09a3f",
    "end ai-research+ai-tech html": "f596303fb1e035eecb6ba49fbc1ea01cc50b6eb9689f4984f875ed5692736c50",
    "end ai-research+ai-tech text": "9fd76cb114d611fa6dcdbdb3f86f34004feacc83deb46059c616ba97884a524c",
    "end ai-news+essays html": "9c2829573da2b4e9fa426d8f093b8cdfceb9eee689a9f82ff0b36f07f33a9f0e",
    "end ai-news+essays text": "2fba20005869215dbddb7a0c3be1adda45029451a60d92c0309a72f37b0fb5f4",
    "end ai-research+ai-tech+ai-news+essays html": "24b4fca42b307468e90485e63c4e284caf917efe5f92dcbbee4e8f6a227f4c1e",
    "end ai-research+ai-tech+ai-news+essays text": "7594851fbbc230712ae4192a9b4dc0afcf5928d638f2b61a4234b9c4abcd9bf8",
    "end none html": "95fe622226dbf43d212db65711ddd545adcb47db8fba7c0465cc9ac46bc330db",
    "end none text": "11be71ac920cd9bc346caa6f5bcad4e00398e2ab3fbe7684759e79b4478bcacb",
}


def example_digest(settings, mode: str):
    """The example digest as written (notes inline), or with its notes moved to the end."""
    if mode == "inline":
        return load_digest(EXAMPLE, settings)
    text = EXAMPLE.read_text(encoding="utf-8")
    assert "\nfootnotes: inline\n" in text
    return parse_digest(text.replace("\nfootnotes: inline\n", "\nfootnotes: end\n", 1), EXAMPLE, settings,
                        Checker(EXAMPLE))


def key(mode: str, categories) -> str:
    return f"{mode} {'all' if categories is None else '+'.join(categories) or 'none'}"


def fingerprints(renderer: Renderer, settings) -> dict[str, str]:
    """sha256 of the HTML and the text of every variant, and of the warnings, in both modes."""
    found = {}
    for mode in MODES:
        digest = example_digest(settings, mode)
        assert digest.footnote_mode == mode
        found[f"{mode} warnings"] = sha256("\n".join(f"{p.line}: {p.message}" for p in digest.warnings))
        for categories in VARIANTS:
            email = renderer.render(digest, categories)
            found[f"{key(mode, categories)} html"] = sha256(email.html)
            found[f"{key(mode, categories)} text"] = sha256(email.text)
    return found


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@pytest.mark.parametrize("mode", MODES)
def test_example_emails_are_byte_identical_to_main(renderer, session_settings, mode):
    found = {k: v for k, v in fingerprints(renderer, session_settings).items() if k.startswith(mode)}
    expected = {k: v for k, v in GOLDEN.items() if k.startswith(mode)}
    assert len(expected) == 1 + 2 * len(VARIANTS)
    changed = sorted(k for k in expected if found.get(k) != expected[k])
    assert not changed, (f"these parts of the example's emails changed: {changed}; if that is meant, "
                         "print the new table with `python -m tests.test_render_golden`")


if __name__ == "__main__":
    settings = load_settings(ROOT / "newsletter.toml", env={})
    for name, digest in fingerprints(Renderer(settings), settings).items():
        print(f'    "{name}": "{digest}",')
