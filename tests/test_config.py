import pytest

from newsletter.config import Category, load_settings
from newsletter.errors import ConfigError

from .conftest import ROOT

MINIMAL = '''
name = "Test Weekly"
sender = "Test Weekly <t@example.org>"
base_url = "https://t.example.org/"
postal_address = "1 Test Street"
[[categories]]
slug = "ai-tech"
name = "AI Tech"
'''


def write(tmp_path, text):
    path = tmp_path / "newsletter.toml"
    path.write_text(text)
    return path


def test_repository_settings(session_settings):
    assert session_settings.name == "Open Models Weekly"
    assert [(c.slug, c.name) for c in session_settings.categories] == [
        ("ai-tech", "AI Tech"), ("ai-research", "AI Research"), ("ai-news", "AI News"), ("essays", "Essays")]
    assert session_settings.digests_dir == ROOT / "digests"


def test_environment_overrides_every_key(tmp_path):
    path = write(tmp_path, MINIMAL)
    settings = load_settings(path, env={
        "NEWSLETTER_NAME": "Env Weekly", "NEWSLETTER_BASE_URL": "https://env.example.org",
        "NEWSLETTER_CATEGORIES": "essays=Essays, ai-news=AI News",
        "NEWSLETTER_OUTPUT_DIR": str(tmp_path / "o"), "NEWSLETTER_REPLY_TO": "r@example.org"})
    assert settings.name == "Env Weekly"
    assert settings.base_url == "https://env.example.org"
    assert settings.categories == (Category("essays", "Essays"), Category("ai-news", "AI News"))
    assert settings.output_dir == tmp_path / "o"
    assert settings.reply_to == "r@example.org"
    assert load_settings(path, env={}).base_url == "https://t.example.org"  # trailing slash dropped
    assert load_settings(path, env={}).output_dir == tmp_path / "out"  # relative to the file


def test_settings_from_the_environment_alone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings(env={"NEWSLETTER_NAME": "N", "NEWSLETTER_SENDER": "n@example.org",
                                  "NEWSLETTER_BASE_URL": "https://n.example.org",
                                  "NEWSLETTER_POSTAL_ADDRESS": "Somewhere"})
    assert settings.name == "N" and settings.categories == ()


@pytest.mark.parametrize("text, message", [
    (MINIMAL.replace('name = "Test Weekly"\n', ""), "missing key 'name'"),
    ("base_ur = 'x'\n" + MINIMAL, "unknown key 'base_ur'"),
    ("resend_api_key = 're_123'\n" + MINIMAL, "key 'resend_api_key' looks like a secret"),
    (MINIMAL + "colour = 'red'\n", "key 'categories' entries take only 'slug' and 'name', not 'colour'"),
    (MINIMAL.replace("https://t.example.org/", "t.example.org"), "key 'base_url' must be an http(s) URL"),
    (MINIMAL.replace('"Test Weekly <t@example.org>"', '"nobody"'), "key 'sender' must be an email address"),
    (MINIMAL.replace('slug = "ai-tech"', 'slug = "AI Tech"'), "key 'categories' slug 'AI Tech' must be"),
    (MINIMAL.replace("postal_address = ", "postal_address = = "), ":5: invalid TOML"),
    (MINIMAL.replace('name = "AI Tech"', "name = 3"), "key 'categories' entries need a 'slug' and a 'name'"),
])
def test_bad_config_is_one_line_naming_the_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as excinfo:
        load_settings(path, env={})
    assert message in str(excinfo.value)
    assert str(excinfo.value).startswith(str(path))
    assert "\n" not in str(excinfo.value)


def test_missing_config_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="newsletter.toml not found, and \\$NEWSLETTER_NAME is not set"):
        load_settings(env={})
    with pytest.raises(ConfigError, match="elsewhere.toml: config file not found"):
        load_settings("elsewhere.toml", env={})


def test_bad_environment_value_names_the_variable(tmp_path):
    path = write(tmp_path, MINIMAL)
    with pytest.raises(ConfigError, match="^NEWSLETTER_BASE_URL: key 'base_url' must be an http"):
        load_settings(path, env={"NEWSLETTER_BASE_URL": "nope"})
