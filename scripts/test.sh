#!/usr/bin/env bash
# Install everything the tests need, then run them. Extra arguments go to pytest.
set -euo pipefail
NEWSLETTER_EXTRAS=test source "$(dirname "$0")/bootstrap.sh"
need_debs chromium chromium-driver
exec .venv/bin/python -m pytest "$@"
