#!/usr/bin/env bash
# Install newsletter, check and render the example digest, then send it to five demo readers
# through the outbox provider: every email lands as an .eml file, no account needed.
set -euo pipefail
source "$(dirname "$0")/bootstrap.sh"
DIGEST=digests/2026-04-22-open-models-weekly.md
DEMO=out/demo
rm -rf "$DEMO"
# The demo keeps its own database, outbox and secret key, so it never touches a real list.
export NEWSLETTER_DATABASE_URL="sqlite:///$DEMO/subscribers.db" NEWSLETTER_OUTBOX_DIR="$DEMO/outbox" \
  NEWSLETTER_SECRET_KEY_FILE="$DEMO/newsletter.key"
mkdir -p "$DEMO"

newsletter check "$DIGEST"
newsletter preview "$DIGEST"
newsletter preview "$DIGEST" --categories ai-tech
newsletter preview "$DIGEST" --text
newsletter subscribers import digests/demo-readers.csv
newsletter send "$DIGEST" --yes
echo
echo "The emails, one .eml file per reader (open one in any mail client):"
ls -1 "$DEMO/outbox"
echo
echo "Rendered previews are in out/. For a live preview that reloads as you edit, run:"
echo "  .venv/bin/newsletter preview $DIGEST --serve     (then open http://127.0.0.1:8025/)"
