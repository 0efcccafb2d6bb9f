#!/usr/bin/env bash
# Install everything the tests need, then run them. Extra arguments go to pytest.
set -euo pipefail
NEWSLETTER_EXTRAS=test source "$(dirname "$0")/bootstrap.sh"
need_debs chromium chromium-driver

# The store tests run against PostgreSQL on 127.0.0.1:5432 (database `test`) as well as SQLite.
if [ -z "${NEWSLETTER_TEST_PG_URL:-}" ] && command -v pg_isready >/dev/null \
    && ! pg_isready -q -h 127.0.0.1 -p 5432; then
  echo "starting PostgreSQL" >&2
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start || true
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi

exec .venv/bin/python -m pytest "$@"
