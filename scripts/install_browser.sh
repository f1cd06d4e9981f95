#!/usr/bin/env bash
# Install Debian's chromium for the browser test of the web demo (tests/deploy/test_web_demo.py),
# driven by the Python `playwright` package with executable_path=/usr/bin/chromium (Playwright's
# own browser download is not used). Does nothing when /usr/bin/chromium exists. Needs root (or
# sudo); non-interactive.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  echo "[browser] $(/usr/bin/chromium --version 2>/dev/null || echo /usr/bin/chromium) present"
  exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
    echo "[browser] /usr/bin/chromium is missing and this is not root: run as root" \
      "\`apt-get install -y chromium\`" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -q --no-install-recommends chromium
echo "[browser] installed $(/usr/bin/chromium --version 2>/dev/null || echo chromium)"
