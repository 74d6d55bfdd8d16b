#!/usr/bin/env bash
# Install Debian's Chromium for the report's browser test (tests/unit/test_report.py), once.
# Idempotent: does nothing when a chromium is already on PATH. Needs root (apt-get); where that is
# not possible (no apt, not root) it says so and exits 0: the browser test then skips with a reason.
set -uo pipefail
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_chromium: no apt-get here; the headless-browser test will be skipped" >&2
    exit 0
fi
if [ "$(id -u)" != "0" ]; then
    SUDO="sudo -n"
else
    SUDO=""
fi
echo "install_chromium: installing Debian's chromium package (once)" >&2
if ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null; }; then
    echo "install_chromium: could not install chromium; the headless-browser test will be skipped" >&2
fi
exit 0
