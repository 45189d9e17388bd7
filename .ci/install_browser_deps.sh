#!/bin/sh
# Install what the browser tests (tests/browser) need, when it is missing:
#   - Debian's `chromium` package (apt-get; needs root or passwordless sudo), which gives
#     /usr/bin/chromium (Playwright's own browser download does not work on our machines);
#   - Playwright for Python, from PyPI, into the virtualenv (the `browser` extra).
# Quick and silent when both are there. It never fails the build: where something cannot be
# installed it says why, and the browser tests are then skipped with that reason.
#
# Usage: .ci/install_browser_deps.sh [PYTHON]      (default: .venv/bin/python)
PYTHON=${1:-.venv/bin/python}
CHROMIUM=${EFFNET_CHROMIUM:-/usr/bin/chromium}

if ! "$PYTHON" -c "import playwright.sync_api" 2>/dev/null; then
    echo "browser tests: installing Playwright for Python (pip install -e '.[browser]')"
    "$PYTHON" -m pip install --quiet -e '.[browser]' \
        || echo "browser tests: could not install Playwright with pip; they will be skipped"
fi

if [ ! -x "$CHROMIUM" ]; then
    if [ "$(id -u)" = 0 ]; then
        SUDO=""
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        SUDO="cannot"
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "browser tests: $CHROMIUM is missing and there is no apt-get here; they will be" \
             "skipped (install Chromium and set EFFNET_CHROMIUM to its path)"
    elif [ "$SUDO" = "cannot" ]; then
        echo "browser tests: $CHROMIUM is missing and apt-get needs root or passwordless sudo;" \
             "they will be skipped (run: sudo apt-get install -y chromium)"
    else
        echo "browser tests: installing Debian's chromium (apt-get install -y chromium)"
        { $SUDO apt-get update -qq \
          && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
            >/dev/null \
            || echo "browser tests: apt-get could not install chromium; they will be skipped"
    fi
fi
exit 0
