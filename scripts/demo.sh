#!/usr/bin/env bash
# Install newsletter, check the example digest and render it: the full email, one reader's
# variant and the plain-text part.
set -euo pipefail
source "$(dirname "$0")/bootstrap.sh"
DIGEST=digests/2026-04-22-open-models-weekly.md
newsletter check "$DIGEST"
newsletter preview "$DIGEST"
newsletter preview "$DIGEST" --categories ai-tech
newsletter preview "$DIGEST" --text
echo
echo "Open out/2026-04-22-open-models-weekly.html in a browser to read the email,"
echo "or run: .venv/bin/newsletter preview $DIGEST --serve   (live preview on http://127.0.0.1:8025/)"
