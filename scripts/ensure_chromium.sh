#!/usr/bin/env bash
# Make Debian's chromium available for the browser tests (tests/browser).
# Playwright's own browser download is not used: Debian's package is what CI machines can reach.
set -euo pipefail

CHROMIUM=${UNBROKEN_CHROMIUM:-/usr/bin/chromium}
if [ -x "$CHROMIUM" ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "ensure_chromium: $CHROMIUM is missing and we are not root; install the 'chromium' package" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# A stale or empty package list finds nothing: refresh it once before installing.
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
test -x "$CHROMIUM"
echo "ensure_chromium: installed $("$CHROMIUM" --version 2>/dev/null || echo chromium)"
