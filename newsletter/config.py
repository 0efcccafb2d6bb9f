"""Settings: `newsletter.toml`, each key overridable by a `NEWSLETTER_*` environment variable.

Secrets (API keys, SMTP passwords, a database password) are never read from the file, only from
the environment; the secret key for hashes kept in the database lives in a key file of its own.
"""

from __future__ import annotations

import os
import re
import secrets
import tomllib
from dataclasses import dataclass, field, replace
from email.headerregistry import HeaderRegistry
from email.utils import getaddresses
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import quote, urlsplit

from .errors import ConfigError, shorten

CONFIG_FILENAME = "newsletter.toml"
KEY_FILENAME = "newsletter.key"
SECRET_KEY_VAR = "NEWSLETTER_SECRET_KEY"
SECRET_KEY_MIN = 32  # characters in $NEWSLETTER_SECRET_KEY, bytes in a key file
SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")
SECRET_HINTS = ("key", "password", "secret", "token")
# Control characters (C0, DEL, C1), line and paragraph separators, and the invisible marks that
# reorder text (bidirectional embeddings, overrides, isolates, LRM/RLM/ALM): they can end an email
# header early or make a terminal show something other than what is stored.
UNSAFE_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")
URL_FORBIDDEN = re.compile(r"[\s\"'<>\\`{}|^]")


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
    # A relative SQLite path: load_settings makes it one beside newsletter.toml (from the file or
    # by default) or in the working directory (from $NEWSLETTER_DATABASE_URL).
    database_url: str = "sqlite:///subscribers.db"
    provider: str | None = None  # None: the outbox, and the CLI says so
    outbox_dir: Path = Path("outbox")
    send_rate: float = 2.0  # provider requests per second (Resend allows 2 to 5 per team)
    batch_size: int = 100  # emails per provider request (Resend's batch limit is 100)
    max_failures: int = 8  # consecutive failed requests before a run pauses
    request_timeout: float = 30.0  # seconds
    # Seconds a sender holds a batch it claimed (renewed while the batch is retried): a batch of
    # a worker that died is taken over by another once its lease has run out.
    batch_lease: float = 120.0
    smtp_host: str = "localhost"
    smtp_port: int = 587
    smtp_security: str = "starttls"  # starttls | ssl | none
    smtp_username: str | None = None  # the password only from $NEWSLETTER_SMTP_PASSWORD
    secret_key_file: Path = Path(KEY_FILENAME)  # unless $NEWSLETTER_SECRET_KEY is set
    # The reader web app (`newsletter serve`)
    proxy_hops: int = 0  # reverse proxies in front that set X-Forwarded-*: 0 = trust none
    confirm_hours: int = 48  # how long a signup's confirmation link works
    signups_per_ip_hour: int = 5  # signup requests one IP address may make per hour
    confirmations_per_day: int = 3  # confirmation emails one address may be sent per day
    # The scheduler (`newsletter scheduler`)
    misfire_grace_hours: int = 6  # a scheduled send late by more than this is skipped, not sent
    schedule: str | None = None  # [schedule] weekly = "mon 08:00 Europe/Berlin": the weekly send, fixed here
    notify: str | None = None  # the writer's address: how each scheduled send ended, by email
    # What comes back after the send (reports.py): webhooks, bounce mailbox, stats
    soft_bounce_limit: int = 3  # issues in a row with a transient bounce before a reader is bounced
    track_opens: bool = True  # whether opens are tracked (a Resend domain setting): stats show them
    track_clicks: bool = True  # the same for clicks
    bounce_imap_host: str | None = None  # the mailbox bounces go to (SMTP); password $NEWSLETTER_BOUNCE_PASSWORD
    bounce_imap_port: int = 993
    bounce_imap_security: str = "ssl"  # ssl | starttls | none
    bounce_imap_user: str | None = None
    bounce_imap_folder: str = "INBOX"  # where reports arrive
    bounce_imap_done_folder: str = "Processed"  # where handled reports are moved
    bounce_fetch_minutes: int = 5  # how often `newsletter scheduler` reads the mailbox
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
    "batch_lease": ("NEWSLETTER_BATCH_LEASE", "number"),
    "smtp_host": ("NEWSLETTER_SMTP_HOST", "text"),
    "smtp_port": ("NEWSLETTER_SMTP_PORT", "count:1,65535"),
    "smtp_security": ("NEWSLETTER_SMTP_SECURITY", "choice:starttls,ssl,none"),
    "smtp_username": ("NEWSLETTER_SMTP_USERNAME", "text"),
    "secret_key_file": ("NEWSLETTER_SECRET_KEY_FILE", "path"),
    "proxy_hops": ("NEWSLETTER_PROXY_HOPS", "count:0,10"),
    "confirm_hours": ("NEWSLETTER_CONFIRM_HOURS", "count:1,720"),
    "signups_per_ip_hour": ("NEWSLETTER_SIGNUPS_PER_IP_HOUR", "count:1,100000"),
    "confirmations_per_day": ("NEWSLETTER_CONFIRMATIONS_PER_DAY", "count:1,100"),
    "misfire_grace_hours": ("NEWSLETTER_MISFIRE_GRACE_HOURS", "count:0,168"),
    "schedule": ("NEWSLETTER_SCHEDULE_WEEKLY", "schedule"),
    "notify": ("NEWSLETTER_NOTIFY", "address"),
    "soft_bounce_limit": ("NEWSLETTER_SOFT_BOUNCE_LIMIT", "count:1,100"),
    "track_opens": ("NEWSLETTER_TRACK_OPENS", "bool"),
    "track_clicks": ("NEWSLETTER_TRACK_CLICKS", "bool"),
    "bounce_imap_host": ("NEWSLETTER_BOUNCE_IMAP_HOST", "text"),
    "bounce_imap_port": ("NEWSLETTER_BOUNCE_IMAP_PORT", "count:1,65535"),
    "bounce_imap_security": ("NEWSLETTER_BOUNCE_IMAP_SECURITY", "choice:ssl,starttls,none"),
    "bounce_imap_user": ("NEWSLETTER_BOUNCE_IMAP_USER", "text"),
    "bounce_imap_folder": ("NEWSLETTER_BOUNCE_IMAP_FOLDER", "text"),
    "bounce_imap_done_folder": ("NEWSLETTER_BOUNCE_IMAP_DONE_FOLDER", "text"),
    "bounce_fetch_minutes": ("NEWSLETTER_BOUNCE_FETCH_MINUTES", "count:1,1440"),
}
BOOLEANS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}
REQUIRED = ("name", "sender", "base_url", "postal_address")
PATH_DEFAULTS = {"digests_dir": "digests", "output_dir": "out", "outbox_dir": "outbox",
                 "secret_key_file": KEY_FILENAME}  # beside newsletter.toml
DEFAULT_DATABASE_URL = "sqlite:///subscribers.db"  # beside newsletter.toml too
# An SQLite URL with a relative path: driver prefix, path (or file: URI), query.
RELATIVE_SQLITE_URL = re.compile(r"^(sqlite(?:\+\w+)?:///)(?!/)([^?]+)(\?.*)?$")


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
    values.setdefault("database_url", _sqlite_relative_to(DEFAULT_DATABASE_URL, base_dir))
    missing = [k for k in REQUIRED if not values.get(k)]
    if missing:
        key = missing[0]
        if not config_path.exists():
            raise ConfigError(f"{config_path} not found, and ${KEYS[key][0]} is not set "
                              "(run where newsletter.toml is, or pass --config)", key=key)
        raise ConfigError(f"missing key '{key}'", path=config_path, key=key)
    lease, timeout = values.get("batch_lease", Settings.batch_lease), values.get("request_timeout", Settings.request_timeout)
    if lease <= timeout:  # a worker waiting on its request would lose the batch it is sending
        raise ConfigError(f"batch_lease ({lease:g} s) must be longer than request_timeout ({timeout:g} s)",
                          path=config_path, key="batch_lease")
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
    if kind == "schedule":
        return _parse_schedule(value, bad)
    if kind == "number" or kind.startswith("count:"):
        return _parse_number(kind, value, bad)
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in BOOLEANS:
            return BOOLEANS[value.strip().lower()]
        raise bad(f"must be true or false, got {shorten(repr(value))}")
    if not isinstance(value, str):
        raise bad(f"must be a string, got {type(value).__name__}")
    if unsafe := UNSAFE_CHARACTERS.search(value):  # the value is not shown: it may be a secret
        raise bad(f"must not contain control or text-direction characters, found {unsafe.group()!r} "
                  f"at position {unsafe.start() + 1}")
    value = value.strip()
    if kind == "url":
        return _parse_url(value, bad)
    if kind == "database":
        return _sqlite_relative_to(_parse_database_url(value, source, bad), base_dir)
    if kind.startswith("choice:"):
        choices = kind.split(":", 1)[1].split(",")
        if value not in choices:
            raise bad(f"must be one of {', '.join(choices)}, got {value!r}")
        return value
    if kind == "address" and not _is_one_address(value):
        raise bad(f"must be an email address, exactly one, like 'Name <me@example.com>', got {value!r}")
    if kind == "path":
        path = Path(value).expanduser()
        return path if path.is_absolute() else base_dir / path
    return value


def _parse_schedule(value: Any, bad) -> str:
    """`[schedule] weekly = "mon 08:00 Europe/Berlin"` (or that string, from the environment)."""
    if isinstance(value, dict):
        extra = sorted(set(value) - {"weekly"})
        if extra:
            raise bad(f"takes only 'weekly', not '{extra[0]}'")
        value = value.get("weekly")
    if not isinstance(value, str):
        raise bad("weekly must be a string like 'mon 08:00 Europe/Berlin'")
    from .schedule import ScheduleError, parse_weekly

    try:
        parse_weekly(value)
    except ScheduleError as e:
        raise bad(f"weekly: {e}") from None
    return " ".join(value.split())


def _parse_url(value: str, bad) -> str:
    """An absolute http(s) URL with a host, nothing that could end an attribute or a header, no
    query or fragment (reader links are built by appending a path)."""
    parts = urlsplit(value)
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        port_ok = False
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok \
            or URL_FORBIDDEN.search(value) or "@" in parts.netloc or "?" in value or "#" in value:
        raise bad(f"must be an http(s) URL like https://news.example.com (a host; no query, fragment, "
                  f"quotes, spaces, <> or backslashes), got {_without_password(value)!r}")
    try:  # the unsubscribe header carries it in ASCII (links.as_uri): its host must have one
        parts.hostname.encode("idna")
    except UnicodeError:
        raise bad(f"must be an http(s) URL whose host is a valid domain name, got {parts.hostname!r}") from None
    return value.rstrip("/")


def _parse_database_url(value: str, source: Path | str, bad) -> str:
    if not re.match(r"^[a-z][a-z0-9+]*://", value):
        raise bad(f"must be an SQLAlchemy URL like sqlite:///subscribers.db or "
                  f"postgresql+psycopg://user@host/db, got {_without_password(value)!r}")
    if isinstance(source, Path) and _has_password(value):
        raise bad("holds a password; secrets are read only from the environment: "
                  "set $NEWSLETTER_DATABASE_URL instead")
    return value


def _sqlite_relative_to(url: str, base_dir: Path) -> str:
    """`url` with a relative SQLite path made absolute against `base_dir`, its query kept, so
    the CLI, the web app and a service started elsewhere all open the same file. Absolute paths,
    in-memory and other databases are left as they are."""
    match = RELATIVE_SQLITE_URL.match(url)
    if not match or match.group(2) == ":memory:":
        return url
    prefix, path, query = match.group(1), match.group(2), match.group(3) or ""
    if path.startswith("file:"):  # an SQLite URI (with uri=true): file:relative/path?mode=ro
        rest = path[len("file:"):]
        if rest.startswith("/") or rest in ("", ":memory:"):
            return url
        return f"{prefix}file:{quote(str(base_dir))}/{rest}{query}"
    return f"{prefix}{base_dir / path}{query}"


def _has_password(url: str) -> bool:
    from sqlalchemy.engine import make_url  # the parser the store will use, so both agree

    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - the store reports a URL it cannot parse
        return False
    return bool(parsed.password) or any(
        name.lower() in ("password", "passwd") for name in parsed.query)


def _without_password(url: str) -> str:
    """`url` safe to show: everything before an @ (where a password would be) and any
    password=... parameter masked."""
    if "@" in url:
        url = "***@" + url.rpartition("@")[2]
    return re.sub(r"(?i)(passw(or)?d=)[^&]*", r"\1***", url)


_HEADERS = HeaderRegistry()


def _is_one_address(value: str) -> bool:
    """True if `value` is exactly one address (`me@x.com` or `Name <me@x.com>`), nothing around it."""
    try:
        header = _HEADERS("reply-to", value)
        addresses = header.addresses
    except Exception:  # noqa: BLE001 - the parser fails on some malformed input, e.g. "a@"
        return False
    return (not header.defects and len(addresses) == 1 and header.groups[0].display_name is None
            and bool(addresses[0].username) and bool(addresses[0].domain)
            and len(getaddresses([value])) == 1)


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
        if unsafe := UNSAFE_CHARACTERS.search(item["name"]):
            raise bad(f"name {item['name'].strip()!r} must not contain control or text-direction "
                      f"characters ({unsafe.group()!r})")
        categories.append(Category(item["slug"], item["name"].strip()))
    return tuple(categories)


# -- the secret key ---------------------------------------------------------------------------

def load_secret_key(settings: Settings | None, env: Mapping[str, str] | None = None, *,
                    create: bool = True) -> bytes:
    """The key for HMACs kept in the database: $NEWSLETTER_SECRET_KEY, else the key file (made on
    first need with 32 random bytes, mode 0600, unless `create` is false)."""
    env = os.environ if env is None else env
    if value := env.get(SECRET_KEY_VAR, ""):
        if len(value) < SECRET_KEY_MIN:
            raise ConfigError(f"must be at least {SECRET_KEY_MIN} characters, got {len(value)}",
                              path=SECRET_KEY_VAR)
        return value.encode()
    path = settings.secret_key_file if settings is not None else Path.cwd() / KEY_FILENAME
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        if not create:
            raise ConfigError(f"secret key file not found and ${SECRET_KEY_VAR} is not set",
                              path=path) from None
        key = _create_key_file(path)
    except OSError as e:
        raise ConfigError(f"cannot read the secret key file: {e.strerror}", path=path) from None
    if len(key) < SECRET_KEY_MIN:
        raise ConfigError(f"the secret key file holds {len(key)} bytes, fewer than {SECRET_KEY_MIN}: "
                          "restore it from your backup", path=path)
    return key


def _create_key_file(path: Path) -> bytes:
    """Write a new key beside its final name, then link it there: another process creating the
    key at the same moment never sees a half-written file, and the first one wins."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass
        finally:
            temporary.unlink()
        directory = os.open(path.parent, os.O_RDONLY)
        try:  # the key must outlive a crash as surely as the hashes made with it
            os.fsync(directory)
        finally:
            os.close(directory)
        return path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot create the secret key file: {e.strerror}", path=path) from None
