"""Settings: `newsletter.toml`, each key overridable by a `NEWSLETTER_*` environment variable.

Secrets (API keys, SMTP passwords) are never read from the file, only from the environment.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, replace
from email.utils import parseaddr
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError

CONFIG_FILENAME = "newsletter.toml"
SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")
SECRET_HINTS = ("key", "password", "secret", "token")


@dataclass(frozen=True)
class Category:
    slug: str
    name: str


@dataclass(frozen=True)
class Settings:
    name: str
    sender: str
    base_url: str
    postal_address: str
    categories: tuple[Category, ...] = ()
    reply_to: str | None = None
    digests_dir: Path = Path("digests")
    output_dir: Path = Path("out")
    templates_dir: Path | None = None  # None: the templates shipped with newsletter
    database_url: str = "sqlite:///subscribers.db"  # relative to the working directory
    provider: str | None = None  # None: the outbox, and the CLI says so
    outbox_dir: Path = Path("outbox")
    send_rate: float = 2.0  # provider requests per second (Resend allows 2 to 5 per team)
    batch_size: int = 100  # emails per provider request (Resend's batch limit is 100)
    max_failures: int = 8  # consecutive failed requests before a run pauses
    request_timeout: float = 30.0  # seconds
    smtp_host: str = "localhost"
    smtp_port: int = 587
    smtp_security: str = "starttls"  # starttls | ssl | none
    smtp_username: str | None = None  # the password only from $NEWSLETTER_SMTP_PASSWORD
    config_path: Path | None = field(default=None, compare=False)

    def category(self, slug: str) -> Category | None:
        return next((c for c in self.categories if c.slug == slug), None)

    @property
    def category_slugs(self) -> tuple[str, ...]:
        return tuple(c.slug for c in self.categories)

    def with_overrides(self, **changes: Any) -> "Settings":
        return replace(self, **changes)


# key -> (environment variable, kind); the kind picks the parser below.
KEYS: dict[str, tuple[str, str]] = {
    "name": ("NEWSLETTER_NAME", "text"),
    "sender": ("NEWSLETTER_SENDER", "address"),
    "reply_to": ("NEWSLETTER_REPLY_TO", "address"),
    "base_url": ("NEWSLETTER_BASE_URL", "url"),
    "postal_address": ("NEWSLETTER_POSTAL_ADDRESS", "text"),
    "categories": ("NEWSLETTER_CATEGORIES", "categories"),
    "digests_dir": ("NEWSLETTER_DIGESTS_DIR", "path"),
    "output_dir": ("NEWSLETTER_OUTPUT_DIR", "path"),
    "templates_dir": ("NEWSLETTER_TEMPLATES_DIR", "path"),
    "database_url": ("NEWSLETTER_DATABASE_URL", "database"),
    "provider": ("NEWSLETTER_PROVIDER", "choice:outbox,resend,smtp"),
    "outbox_dir": ("NEWSLETTER_OUTBOX_DIR", "path"),
    "send_rate": ("NEWSLETTER_SEND_RATE", "number"),
    "batch_size": ("NEWSLETTER_BATCH_SIZE", "count:1,100"),
    "max_failures": ("NEWSLETTER_MAX_FAILURES", "count:1,1000"),
    "request_timeout": ("NEWSLETTER_REQUEST_TIMEOUT", "number"),
    "smtp_host": ("NEWSLETTER_SMTP_HOST", "text"),
    "smtp_port": ("NEWSLETTER_SMTP_PORT", "count:1,65535"),
    "smtp_security": ("NEWSLETTER_SMTP_SECURITY", "choice:starttls,ssl,none"),
    "smtp_username": ("NEWSLETTER_SMTP_USERNAME", "text"),
}
REQUIRED = ("name", "sender", "base_url", "postal_address")
PATH_DEFAULTS = {"digests_dir": "digests", "output_dir": "out", "outbox_dir": "outbox"}  # beside newsletter.toml


def load_settings(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read settings from `path` (or $NEWSLETTER_CONFIG, or ./newsletter.toml) plus the environment."""
    env = os.environ if env is None else env
    explicit = path or env.get("NEWSLETTER_CONFIG")
    config_path = Path(explicit) if explicit else Path(CONFIG_FILENAME)
    raw: dict[str, Any] = {}
    if config_path.exists() or explicit:
        raw = _read_toml(config_path)
    base_dir = config_path.resolve().parent

    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in KEYS:
            if any(hint in key.lower() for hint in SECRET_HINTS):
                raise ConfigError(f"key '{key}' looks like a secret; secrets are read only from "
                                  "the environment", path=config_path, key=key)
            raise ConfigError(f"unknown key '{key}' (known: {', '.join(KEYS)})",
                              path=config_path, key=key)
        values[key] = _parse(key, value, config_path, base_dir)
    for key, (var, _kind) in KEYS.items():
        if env.get(var, "") != "":
            values[key] = _parse(key, env[var], var, Path.cwd())

    for key, default in PATH_DEFAULTS.items():
        values.setdefault(key, base_dir / default)
    missing = [k for k in REQUIRED if not values.get(k)]
    if missing:
        key = missing[0]
        if not config_path.exists():
            raise ConfigError(f"{config_path} not found, and ${KEYS[key][0]} is not set "
                              "(run where newsletter.toml is, or pass --config)", key=key)
        raise ConfigError(f"missing key '{key}'", path=config_path, key=key)
    return Settings(**values, config_path=config_path if config_path.exists() else None)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError("config file not found", path=path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file: {e}", path=path) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        line = re.search(r"at line (\d+)", str(e))
        where = f"{path}:{line.group(1)}" if line else str(path)
        raise ConfigError(f"{where}: invalid TOML: {str(e).split(' (at line')[0]}") from None


def _parse(key: str, value: Any, source: Path | str, base_dir: Path) -> Any:
    """Check one value; `source` names the file or the environment variable it came from."""
    kind = KEYS[key][1]

    def bad(what: str) -> ConfigError:
        return ConfigError(f"key '{key}' {what}", path=source, key=key)

    if kind == "categories":
        return _parse_categories(value, bad)
    if kind == "number" or kind.startswith("count:"):
        return _parse_number(kind, value, bad)
    if not isinstance(value, str):
        raise bad(f"must be a string, got {type(value).__name__}")
    value = value.strip()
    if kind == "url":
        if not re.match(r"^https?://[^\s/]+", value):
            raise bad(f"must be an http(s) URL, got {value!r}")
        return value.rstrip("/")
    if kind == "database":
        if not re.match(r"^[a-z][a-z0-9+]*://", value):
            raise bad(f"must be an SQLAlchemy URL like sqlite:///subscribers.db or "
                      f"postgresql+psycopg://user@host/db, got {value!r}")
        return value
    if kind.startswith("choice:"):
        choices = kind.split(":", 1)[1].split(",")
        if value not in choices:
            raise bad(f"must be one of {', '.join(choices)}, got {value!r}")
        return value
    if kind == "address":
        if "@" not in parseaddr(value)[1]:
            raise bad(f"must be an email address like 'Name <me@example.com>', got {value!r}")
    if kind == "path":
        path = Path(value).expanduser()
        return path if path.is_absolute() else base_dir / path
    return value


def _parse_number(kind: str, value: Any, bad) -> float | int:
    whole = kind.startswith("count:")
    try:
        number = (int(value) if whole else float(value)) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        number = None
    if number is None or (whole and isinstance(value, float)):
        raise bad(f"must be a {'whole ' if whole else ''}number, got {value!r}")
    low, high = (float(x) for x in kind.split(":", 1)[1].split(",")) if whole else (0.001, 1e9)
    if not low <= number <= high:
        raise bad(f"must be between {low:g} and {high:g}, got {value!r}")
    return number


def _parse_categories(value: Any, bad) -> tuple[Category, ...]:
    if isinstance(value, str):  # NEWSLETTER_CATEGORIES="ai-tech=AI Tech,essays=Essays"
        items = []
        for part in filter(None, (p.strip() for p in value.split(","))):
            slug, sep, name = part.partition("=")
            if not sep:
                raise bad(f"entries must look like 'slug=Display name', got {part!r}")
            items.append({"slug": slug.strip(), "name": name.strip()})
        value = items
    if not isinstance(value, list):
        raise bad("must be a list of [[categories]] tables with 'slug' and 'name'")
    categories: list[Category] = []
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("slug"), str) \
                or not isinstance(item.get("name"), str):
            raise bad("entries need a 'slug' and a 'name'")
        extra = sorted(set(item) - {"slug", "name"})
        if extra:
            raise bad(f"entries take only 'slug' and 'name', not '{extra[0]}'")
        if not SLUG_RE.match(item["slug"]):
            raise bad(f"slug {item['slug']!r} must be lowercase letters, digits and dashes")
        if any(c.slug == item["slug"] for c in categories):
            raise bad(f"slug {item['slug']!r} is listed twice")
        categories.append(Category(item["slug"], item["name"].strip()))
    return tuple(categories)
