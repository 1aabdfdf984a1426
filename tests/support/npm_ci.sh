#!/usr/bin/env bash
# Installs a test's npm packages into DIR from the committed package-lock.json, with
# `npm ci`; skipped when DIR/node_modules already holds exactly that lock file's packages.
#   tests/support/npm_ci.sh DIR
set -euo pipefail
cd "$1"
stamp=node_modules/.switchboard-lock-sha256
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  echo "npm_ci.sh: node_modules matches package-lock.json"
  exit 0
fi
npm ci --no-audit --no-fund --loglevel=error
echo "$want" > "$stamp"
echo "npm_ci.sh: installed $(ls node_modules | wc -l) packages"
