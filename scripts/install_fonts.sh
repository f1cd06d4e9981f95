#!/usr/bin/env bash
# Install Debian's Noto CJK fonts (fonts-noto-cjk), used to draw Chinese/Japanese/Korean class
# names in the demo's legend (clipdistill/utils/visualize.py: font_for). Optional: without them
# those names are drawn as boxes, with a warning. Does nothing when the fonts are present; without
# root (or passwordless sudo) it only prints how to install them and exits 0.
set -uo pipefail
if ls /usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc >/dev/null 2>&1; then
  echo "[fonts] Noto CJK present"
  exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
    echo "[fonts] fonts-noto-cjk is missing and this is not root: CJK class names will be drawn" \
      "as boxes; run as root \`apt-get install -y fonts-noto-cjk\`" >&2
    exit 0
  fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "[fonts] no apt-get: install a CJK font (e.g. Noto Sans CJK) and set CLIPDISTILL_FONT" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if $SUDO apt-get update -qq && $SUDO apt-get install -y -q --no-install-recommends fonts-noto-cjk; then
  echo "[fonts] installed fonts-noto-cjk"
else
  echo "[fonts] could not install fonts-noto-cjk: CJK class names will be drawn as boxes" >&2
fi
exit 0
