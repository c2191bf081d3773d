#!/bin/sh
# `make test` runs the dashboard's browser tests (tests/browser) in Debian's Chromium. When it
# is missing: installed here if we are root (as in CI), otherwise stop with the command to run.
set -eu
INSTALL="apt-get install -y chromium chromium-driver"
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "Chromium is missing: $INSTALL" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive $INSTALL
    chromium --headless=new --no-sandbox --disable-gpu --dump-dom about:blank >/dev/null
    exit 0
fi
echo "The browser tests need Chromium and its driver. Install them, then run make test again:" >&2
echo "    sudo $INSTALL" >&2
exit 1
