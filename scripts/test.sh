#!/usr/bin/env bash
# Install everything the tests need, then run them. Extra arguments go to pytest.
set -euo pipefail
NEWSLETTER_EXTRAS=test source "$(dirname "$0")/bootstrap.sh"
need_debs chromium chromium-driver
# SpamAssassin scores a sent message with its local rules; the test skips, saying so, without it.
need_debs spamassassin || echo "warning: could not install spamassassin; its test will be skipped" >&2
# Dovecot: the bounce mailbox tests start their own IMAP server on 127.0.0.1 from it (the package's
# system service is not used; where systemd started it, `systemctl disable --now dovecot` stops it).
# Those tests skip, saying so, without it.
need_debs dovecot-imapd || echo "warning: could not install dovecot-imapd; the bounce mailbox tests will be skipped" >&2

# The official MJML compiler (npm `mjml`, pinned in tools/mjml/package-lock.json): a test checks
# that the templates render the same with it as with mjml-python. Skipped without node and npm.
if command -v npm >/dev/null && command -v node >/dev/null; then
  if [ ! -x tools/mjml/node_modules/.bin/mjml ] \
      || [ tools/mjml/package-lock.json -nt tools/mjml/node_modules/.package-lock.json ]; then
    echo "installing the official MJML compiler into tools/mjml" >&2
    (cd tools/mjml && npm ci --no-audit --no-fund --loglevel=error >/dev/null) \
      || echo "warning: npm could not install mjml; its test will be skipped" >&2
  fi
else
  echo "warning: node and npm are missing; the official-MJML test will be skipped" >&2
fi

# The store tests run against PostgreSQL on 127.0.0.1:5432 (database `test`) as well as SQLite.
if [ -z "${NEWSLETTER_TEST_PG_URL:-}" ] && command -v pg_isready >/dev/null \
    && ! pg_isready -q -h 127.0.0.1 -p 5432; then
  echo "starting PostgreSQL" >&2
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start || true
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi

exec .venv/bin/python -m pytest "$@"
