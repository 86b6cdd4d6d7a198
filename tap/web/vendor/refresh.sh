#!/usr/bin/env bash
# Refresh the browser crypto the web client vendors (tap/web/static/vendor/) from the npm registry.
#
# Why vendored: the page may fetch nothing from outside at run time (no CDN), and `make run` needs
# no build step, so the modules are committed. Why this script: the copies must be exactly the
# audited packages at the pinned versions. `npm ci` installs what package-lock.json pins and checks
# every tarball against the lockfile's sha512 integrity; vendor.mjs then copies the import closure
# of the three entry points unchanged except for the '@noble/hashes/…' specifiers, which become
# relative paths (a browser resolves bare specifiers only through an import map, and an inline
# import map would need CSP 'unsafe-inline').
#
# To move to new versions: edit the pins in package.json, run `npm install --package-lock-only
# --ignore-scripts` here, run this script, review `git diff`, run tests/test_web_*.py.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp "$here/package.json" "$here/package-lock.json" "$work/"
(cd "$work" && npm ci --ignore-scripts --no-audit --no-fund)
node "$here/vendor.mjs" "$work/node_modules" "$here/../static/vendor"
