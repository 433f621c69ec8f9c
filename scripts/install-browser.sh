#!/usr/bin/env bash
# Install Debian's Chromium and its WebDriver (plus an emoji font for the page
# icons) for the headless browser tests: tests/test_e2e_browser.py.
# Idempotent: does nothing when they are already there.  Needs root (or sudo).
# Nothing is downloaded but Debian packages: no browser or driver builds.
set -euo pipefail

CHROMIUM=/usr/bin/chromium
DRIVER=/usr/bin/chromedriver
EMOJI_FONT=/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf

if [ -x "$CHROMIUM" ] && [ -x "$DRIVER" ] && [ -f "$EMOJI_FONT" ]; then
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo -n"
    else
        echo "install-browser.sh: root is needed to install chromium and chromium-driver" >&2
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends \
    chromium chromium-driver fonts-dejavu-core fonts-noto-color-emoji >/dev/null

"$DRIVER" --version
