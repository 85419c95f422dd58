#!/usr/bin/env bash
# Installs the npm packages of the browser tests (playwright-core, pinned by
# package-lock.json) into tests/browser/node_modules. Idempotent: nothing is
# done while node_modules matches the lock file. No browser is downloaded:
# the tests drive Debian's /usr/bin/chromium (deploy/install-deps.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
stamp=node_modules/.fanout-lock.sha256
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -d node_modules/playwright-core ]; then
  exit 0
fi
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
npm ci --no-audit --no-fund --loglevel=error >&2
echo "$want" > "$stamp"
