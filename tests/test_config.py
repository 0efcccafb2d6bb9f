import json
import re
import stat

import pytest

from newsletter.config import Category, load_secret_key, load_settings
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
    ("track_opens = 'maybe'\n" + MINIMAL, "key 'track_opens' must be true or false, got 'maybe'"),
    (MINIMAL.replace('name = "AI Tech"', 'name = "AI \\u202eTech"'),
     "key 'categories' name 'AI \\u202eTech' must not contain control or text-direction characters"),
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
    with pytest.raises(ConfigError, match="^NEWSLETTER_TRACK_CLICKS: key 'track_clicks' must be true or false"):
        load_settings(path, env={"NEWSLETTER_TRACK_CLICKS": "sometimes"})


# -- values that end up in email headers, links and messages ------------------------------------

TEXT_KEYS = ["name", "sender", "reply_to", "postal_address", "smtp_host", "smtp_username"]


def with_key(key, value):
    """MINIMAL with `key` set to `value`, written as a TOML string with its characters escaped."""
    return f"{key} = {json.dumps(value)}\n" + re.sub(rf"^{key} = .*\n", "", MINIMAL, count=1, flags=re.M)


@pytest.mark.parametrize("key", TEXT_KEYS)
@pytest.mark.parametrize("char", ["\r", "\n", "\x00", "\x1b", "\x85", "\u202e", "\u2066"])
def test_control_characters_are_refused_in_text_values(tmp_path, key, char):
    good = {"name": "Test Weekly", "sender": "Test <t@example.org>", "reply_to": "r@example.org",
            "postal_address": "1 Test Street", "smtp_host": "smtp.example.org", "smtp_username": "news"}
    value = good[key][:4] + char + good[key][4:]
    var = f"NEWSLETTER_{key.upper()}"
    for text, env in ((with_key(key, value), {}), (MINIMAL, {var: value})):
        path = write(tmp_path, text)
        source = var if env else path
        with pytest.raises(ConfigError) as excinfo:
            load_settings(path, env=env)
        message = str(excinfo.value)
        assert message.startswith(f"{source}: key '{key}' must not contain control or text-direction "
                                  f"characters, found {char!r} at position 5")
        assert char not in message and "\n" not in message


@pytest.mark.parametrize("value", [
    "a@example.org, b@example.org",  # two readers would get every reply
    "a@example.org b@example.org",
    "Jane <a@example.org> junk",
    "garbage a@example.org",
    "Jane <a@example.org",
    "team: a@example.org, b@example.org;",
    "nobody", "a@", "@example.org", "<>", "",
])
@pytest.mark.parametrize("key", ["sender", "reply_to"])
def test_sender_and_reply_to_are_exactly_one_address(tmp_path, key, value):
    path = write(tmp_path, MINIMAL)
    env = {"NEWSLETTER_SENDER": "Test <t@example.org>", f"NEWSLETTER_{key.upper()}": value}
    if value == "":  # an empty variable leaves the key unset: set it in the file instead
        path, env = write(tmp_path, with_key(key, value)), {}
    with pytest.raises(ConfigError, match=f"key '{key}' must be an email address, exactly one"):
        load_settings(path, env=env)


@pytest.mark.parametrize("value", ['"Doe, Jane" <jane@example.org>', "jane@example.org", "<jane@example.org>",
                                   "Zoë Lindqvist <zoe@exämple.se>", "Jane (the editor) <jane@example.org>"])
def test_one_address_with_a_display_name_is_fine(tmp_path, value):
    settings = load_settings(write(tmp_path, MINIMAL), env={"NEWSLETTER_REPLY_TO": value,
                                                            "NEWSLETTER_SENDER": value})
    assert settings.sender == value and settings.reply_to == value


@pytest.mark.parametrize("value", [
    "t.example.org", "ftp://t.example.org", "javascript://t.example.org/%0aalert(1)", "https://",
    "https:///path", 'https://t.example.org/"onmouseover="x', "https://t.example.org/a b",
    "https://t.example.org/<x>", "https://t.example.org\\@evil.example", "https://t.example.org/'x",
    "https://t.example.org/?utm=1", "https://t.example.org/#top", "https://t.example.org:99999",
    "https://user:pw@t.example.org", "https://t.example.org/`x`", "https://" + "ü" * 64 + ".org",
])
def test_base_url_is_an_absolute_http_url_and_nothing_else(tmp_path, value):
    path = write(tmp_path, MINIMAL)
    with pytest.raises(ConfigError) as excinfo:
        load_settings(path, env={"NEWSLETTER_BASE_URL": value})
    assert str(excinfo.value).startswith("NEWSLETTER_BASE_URL: key 'base_url' must be an http(s) URL")
    assert "pw" not in str(excinfo.value)


@pytest.mark.parametrize("value, kept", [
    ("https://t.example.org/", "https://t.example.org"), ("http://localhost:8025", "http://localhost:8025"),
    ("https://example.org/news/", "https://example.org/news"), ("http://[::1]:8080/n", "http://[::1]:8080/n"),
    ("https://exämple.org/über", "https://exämple.org/über"),
])
def test_good_base_urls(tmp_path, value, kept):
    assert load_settings(write(tmp_path, MINIMAL), env={"NEWSLETTER_BASE_URL": value}).base_url == kept


# -- the database URL: its password only from the environment ------------------------------------

PASSWORD = "hunter2-Secret"


@pytest.mark.parametrize("url", [
    f"postgresql://news:{PASSWORD}@db.example.org/news",
    f"postgresql+psycopg://news:{PASSWORD}@db.example.org:5432/news?sslmode=require",
    f"postgresql://news@db.example.org/news?password={PASSWORD}",
])
def test_a_database_password_in_the_file_is_refused(tmp_path, url):
    path = write(tmp_path, f'database_url = "{url}"\n' + MINIMAL)
    with pytest.raises(ConfigError) as excinfo:
        load_settings(path, env={})
    message = str(excinfo.value)
    assert message.startswith(f"{path}: key 'database_url' holds a password")
    assert "$NEWSLETTER_DATABASE_URL" in message and PASSWORD not in message
    # ... while the same URL from the environment is how a password should come
    assert load_settings(write(tmp_path, MINIMAL), env={"NEWSLETTER_DATABASE_URL": url}).database_url == url


@pytest.mark.parametrize("url", [f"postgres//news:{PASSWORD}@db/news", f"news:{PASSWORD}@db/news",
                                 f"postgresql://news:{PASSWORD}@db/news\x00",
                                 f"postgresql//news@db/news?password={PASSWORD}"])
def test_no_error_shows_the_database_password(tmp_path, url):
    for text, env in ((MINIMAL, {"NEWSLETTER_DATABASE_URL": url}), (with_key("database_url", url), {})):
        with pytest.raises(ConfigError) as excinfo:
            load_settings(write(tmp_path, text), env=env)
        assert "database_url" in str(excinfo.value) and PASSWORD not in str(excinfo.value)


def test_a_database_url_without_password_is_fine_in_the_file(tmp_path):
    path = write(tmp_path, 'database_url = "postgresql://news@db.example.org/news"\n' + MINIMAL)
    assert load_settings(path, env={}).database_url == "postgresql://news@db.example.org/news"


# -- the database URL: a relative SQLite path is beside newsletter.toml -----------------------------

@pytest.mark.parametrize("url, expected", [
    (None, "sqlite:///{toml}/subscribers.db"),  # the default
    ("sqlite:///subscribers.db", "sqlite:///{toml}/subscribers.db"),
    ("sqlite:///data/x.db?timeout=20", "sqlite:///{toml}/data/x.db?timeout=20"),
    ("sqlite+pysqlite:///x.db", "sqlite+pysqlite:///{toml}/x.db"),
    ("sqlite:///file:x.db?mode=ro&uri=true", "sqlite:///file:{toml}/x.db?mode=ro&uri=true"),
    ("sqlite:////abs/x.db", "sqlite:////abs/x.db"),
    ("sqlite://", "sqlite://"),
    ("sqlite:///:memory:", "sqlite:///:memory:"),
    ("postgresql://news@db.example.org/news", "postgresql://news@db.example.org/news"),
])
def test_a_relative_sqlite_path_is_beside_the_settings_file(tmp_path, monkeypatch, url, expected):
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.chdir(tmp_path)
    text = MINIMAL if url is None else f'database_url = "{url}"\n' + MINIMAL
    assert load_settings(write(site, text), env={}).database_url == expected.format(toml=site)


def test_a_relative_sqlite_path_from_the_environment_is_in_the_working_directory(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.chdir(tmp_path)
    env = {"NEWSLETTER_DATABASE_URL": "sqlite:///data/x.db?timeout=20"}
    in_cwd = f"sqlite:///{tmp_path}/data/x.db?timeout=20"
    assert load_settings(write(site, MINIMAL), env=env).database_url == in_cwd
    # no settings file at all: the working directory too
    env |= {"NEWSLETTER_NAME": "N", "NEWSLETTER_SENDER": "s@example.org",
            "NEWSLETTER_BASE_URL": "https://n.example.org", "NEWSLETTER_POSTAL_ADDRESS": "1 Street"}
    assert load_settings(None, env=env).database_url == in_cwd
    del env["NEWSLETTER_DATABASE_URL"]
    assert load_settings(None, env=env).database_url == f"sqlite:///{tmp_path}/subscribers.db"


# -- the secret key -------------------------------------------------------------------------------

def test_secret_key_from_the_environment(tmp_path):
    settings = load_settings(write(tmp_path, MINIMAL), env={})
    key = "k" * 32
    assert load_secret_key(settings, {"NEWSLETTER_SECRET_KEY": key}) == key.encode()
    with pytest.raises(ConfigError) as excinfo:
        load_secret_key(settings, {"NEWSLETTER_SECRET_KEY": "short-" + "s" * 25})
    assert str(excinfo.value) == "NEWSLETTER_SECRET_KEY: must be at least 32 characters, got 31"
    assert not (tmp_path / "newsletter.key").exists()


def test_secret_key_file_made_on_first_need_beside_the_settings(tmp_path):
    settings = load_settings(write(tmp_path, MINIMAL), env={})
    path = tmp_path / "newsletter.key"
    assert settings.secret_key_file == path
    with pytest.raises(ConfigError, match="newsletter.key: secret key file not found and "
                                          r"\$NEWSLETTER_SECRET_KEY is not set"):
        load_secret_key(settings, {}, create=False)
    assert not path.exists()
    key = load_secret_key(settings, {})
    assert len(key) == 32 and path.read_bytes() == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_secret_key(settings, {}) == key  # made once, then read
    assert load_secret_key(settings, {}, create=False) == key
    assert [p.name for p in tmp_path.iterdir() if "key" in p.name] == ["newsletter.key"]  # no leftovers
    other = load_settings(write(tmp_path, MINIMAL), env={"NEWSLETTER_SECRET_KEY_FILE": str(tmp_path / "k2")})
    assert load_secret_key(other, {}) != key


def test_secret_key_file_in_the_working_directory_without_settings_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings(env={"NEWSLETTER_NAME": "N", "NEWSLETTER_SENDER": "n@example.org",
                                  "NEWSLETTER_BASE_URL": "https://n.example.org",
                                  "NEWSLETTER_POSTAL_ADDRESS": "Somewhere"})
    assert settings.secret_key_file == tmp_path / "newsletter.key"
    assert load_secret_key(None, {}) == load_secret_key(settings, {}) == (tmp_path / "newsletter.key").read_bytes()


def test_a_truncated_key_file_is_an_error(tmp_path):
    settings = load_settings(write(tmp_path, MINIMAL), env={})
    (tmp_path / "newsletter.key").write_bytes(b"x" * 10)
    with pytest.raises(ConfigError, match="holds 10 bytes, fewer than 32: restore it from your backup"):
        load_secret_key(settings, {})


@pytest.mark.parametrize("key", ["secret_key", "secret_key_value", "database_password"])
def test_the_key_itself_is_never_a_setting(tmp_path, key):
    with pytest.raises(ConfigError, match=f"key '{key}' looks like a secret"):
        load_settings(write(tmp_path, f'{key} = "{"k" * 40}"\n' + MINIMAL), env={})
