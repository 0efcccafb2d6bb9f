"""The example digest's emails, byte for byte: speed work on parsing and inlining must not change
what a reader gets.

The figures are the sha256 of each email's HTML and text as main rendered them before the render
speed work (December 2026; the HTML regenerated when the layout, preheader and dark-mode work
changed the templates, the inliner checked against premailer by tests/test_inliner.py), for every
category set the render benchmark uses, with the notes after
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
    "inline all html": "905630c25a9b6efcc8d2057c1f0ea347403aadf8d18edcae6ac847c70913ac62",
    "inline all text": "b1c3180cf4c2aa4dfc60902f778a6670d6dfcc2a906558f4b2b6a7ad042c7137",
    "inline ai-research html": "6d7c59b959b2c4fc85c17f4292c87ffda6e1e2dca20a8f9b7047138dbd24544b",
    "inline ai-research text": "d86dc1fc22f51fff16cd45a90ff29f597a10be3baf212f53977d7198a9221bf1",
    "inline ai-tech html": "1281feca9446e26dcbb6fd0468adbd8b084aadba2c73349e2a1cd097e1abd880",
    "inline ai-tech text": "1f864f85721c24ec86bcbbe6a1c6f91ec8cd01d404eb61b70cfbb9079dd36b75",
    "inline ai-news html": "914300678a3ab30bece702324e999f165cfdad2027d97782d8787b52130eac11",
    "inline ai-news text": "b01d43d26c60999dd67e26939031540fc608ea584bea8f4da8fb8fd984607082",
    "inline essays html": "5c376d4f63d31ab2442c864876a16ba0dd5a19faa45d2c87910480a775b090b4",
    "inline essays text": "afefb1dcfb75405cafd5bf92ce94055b17783ab4ff08dcd251a9bdeb1f1601cf",
    "inline ai-research+ai-tech html": "0b4ca6886330f6f1c208f6c771a26cd1e5bd9792ccb68d33b93e3a25bca5d210",
    "inline ai-research+ai-tech text": "d68e0c99615d74928f216879b770f3edeed30cc5e5560633ad118f6849402f85",
    "inline ai-news+essays html": "b3641f044c08d5b4632b1c42040f4d468f2d97962b030efc1b7f0f32703038eb",
    "inline ai-news+essays text": "0a098a93ec1ff573728c071dce0f53fc44fff8783280ecdb383780aea142349a",
    "inline ai-research+ai-tech+ai-news+essays html": "905630c25a9b6efcc8d2057c1f0ea347403aadf8d18edcae6ac847c70913ac62",
    "inline ai-research+ai-tech+ai-news+essays text": "b1c3180cf4c2aa4dfc60902f778a6670d6dfcc2a906558f4b2b6a7ad042c7137",
    "inline none html": "2648ce9e311a368cce4550f939a1fc186161426cce331f6489b897ecc34c5350",
    "inline none text": "4f53808eee8525fce95b55cb28be22902832f8cc00f57202ab37690888958522",
    "end warnings": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "end all html": "886b2ad801d6306212793a5060803e7ee0d7df7d673de8b648023a9d4d6e3bdf",
    "end all text": "7594851fbbc230712ae4192a9b4dc0afcf5928d638f2b61a4234b9c4abcd9bf8",
    "end ai-research html": "ee520fbaaaf8a4640b3bff9f3a486860ee1befeb5d41ffe0e62587956c9362d0",
    "end ai-research text": "520ef15f8a36d73efd2556c62de376bc7e3ee7995a74c6104e87c65098994065",
    "end ai-tech html": "739ed6480f232851d4aa62c112af962adeddb715fa04e3cdd31e46095a806b94",
    "end ai-tech text": "21120a4ce5dd1e17c46193f14d5a4d68fa5353d0e82406168e20d49e92f464bc",
    "end ai-news html": "1eadabcd4b473e2a3e1fac56838c976653500bff831fce2a7114f50d4f6da242",
    "end ai-news text": "024c2c8a2c50b0372e40dbc34446809e2e0bd48a6f562a644d00e1d4a0666506",
    "end essays html": "69233a92e935195652108fccd3739bb0e01724e7a0d731fe72462c4daad6f5fb",
    "end essays text": "34f2ed47737ea2a5f1c3f180781787f108bb59bd5cb046ede01b7f7af5f7c3ee",
    "end ai-research+ai-tech html": "6da8312b233b1a9937beecf40d5a0fddcbdaaf001b34d604ff7c07d82a0e08b6",
    "end ai-research+ai-tech text": "9fd76cb114d611fa6dcdbdb3f86f34004feacc83deb46059c616ba97884a524c",
    "end ai-news+essays html": "d7a1943bf456f9594a8fe9c915f684307516846ba172daa2ba2f99e00311bee6",
    "end ai-news+essays text": "a6ebadb8d66cbe29aaaf37dd36d997570f04df4fbb56ef73719fb7f266cd8989",
    "end ai-research+ai-tech+ai-news+essays html": "886b2ad801d6306212793a5060803e7ee0d7df7d673de8b648023a9d4d6e3bdf",
    "end ai-research+ai-tech+ai-news+essays text": "7594851fbbc230712ae4192a9b4dc0afcf5928d638f2b61a4234b9c4abcd9bf8",
    "end none html": "c920d325d860e3bdff22305d2b528447278c6243c0b7e0243897a892238e19a3",
    "end none text": "cdb9ac1fd61eda1ed65420296a636dbf553295e194ecb31320d716fa8b6e1b8e",
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
