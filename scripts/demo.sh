#!/usr/bin/env bash
# Install newsletter, check and render the example digest, then send it to five demo readers
# through the outbox provider: every email lands as an .eml file, no account needed.
set -euo pipefail
source "$(dirname "$0")/bootstrap.sh"
DIGEST=digests/2026-04-22-open-models-weekly.md
DEMO=out/demo
rm -rf "$DEMO"
# The demo keeps its own database, outbox and secret key, so it never touches a real list; its
# emails link to a reader web app on this machine (`newsletter serve`, printed at the end).
export NEWSLETTER_DATABASE_URL="sqlite:///$DEMO/subscribers.db" NEWSLETTER_OUTBOX_DIR="$DEMO/outbox" \
  NEWSLETTER_SECRET_KEY_FILE="$DEMO/newsletter.key" NEWSLETTER_BASE_URL="http://127.0.0.1:8000"
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
echo
echo "To answer the links in these emails (unsubscribe, preferences, view in the browser), and to try"
echo "the signup form and the archive, run the reader web app on the demo's database:"
echo "  NEWSLETTER_DATABASE_URL=$NEWSLETTER_DATABASE_URL NEWSLETTER_OUTBOX_DIR=$NEWSLETTER_OUTBOX_DIR \\"
echo "  NEWSLETTER_SECRET_KEY_FILE=$NEWSLETTER_SECRET_KEY_FILE NEWSLETTER_BASE_URL=$NEWSLETTER_BASE_URL \\"
echo "  .venv/bin/newsletter serve     (then open http://127.0.0.1:8000/issues/)"
