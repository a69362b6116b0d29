#!/usr/bin/env bash
# Checks that a `dvc plots show` / `dvc plots diff` page renders its charts with no network:
# headless Chromium (Debian: `apt-get install chromium`) opens the page with every host
# unresolvable and a dead proxy, then
#   1. the page loads no script from the network (DVC's default template uses a CDN),
#   2. every chart (one vegaEmbed call each) has drawn its marks (<canvas class="marks">),
#   3. a screenshot of the top of the page is not blank.
# Usage: scripts/check_plots_offline.sh [page.html] [screenshot.png]
#        (defaults: plots/html/index.html, plots/html/screenshot.png; `make plots-check`)
set -euo pipefail
PAGE=${1:-plots/html/index.html}
SHOT=${2:-$(dirname "$PAGE")/screenshot.png}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=$ROOT/.venv/bin/python
[ -x "$PY" ] || PY=python3

fail() { echo "check_plots_offline: $*" >&2; exit 1; }
[ -f "$PAGE" ] || fail "no page at $PAGE (run \`make plots\` first)"
BROWSER=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
[ -n "$BROWSER" ] || fail "no chromium on PATH (Debian: apt-get install chromium)"

if grep -Eiq '<script[^>]*src="(https?:)?//' "$PAGE"; then
  fail "$PAGE loads scripts from the network; render it with --html-template assets/vega/offline.html"
fi
expected=$({ grep -o 'vegaEmbed(' "$PAGE" || true; } | wc -l)
[ "$expected" -gt 0 ] || fail "$PAGE has no Vega chart"

URL="file://$(cd "$(dirname "$PAGE")" && pwd)/$(basename "$PAGE")"
OFFLINE=(--headless --no-sandbox --disable-gpu --hide-scrollbars --no-first-run
  --proxy-server=127.0.0.1:9 --host-resolver-rules="MAP * ~NOTFOUND"
  --virtual-time-budget=20000)
dom=$("$BROWSER" "${OFFLINE[@]}" --dump-dom "$URL" 2>/dev/null)
drawn=$({ grep -Eo '<(canvas|svg)[^>]*class="marks"' <<<"$dom" || true; } | wc -l)
[ "$drawn" -ge "$expected" ] || fail "$drawn of $expected charts drawn offline"

"$BROWSER" "${OFFLINE[@]}" --window-size=1280,1600 --screenshot="$SHOT" "$URL" >/dev/null 2>&1
"$PY" - "$SHOT" <<'EOF'
import sys

from PIL import Image

img = Image.open(sys.argv[1]).convert("L")
inked = sum(n for level, n in enumerate(img.histogram()) if level < 200) / (img.width * img.height)
if inked < 0.005:
    sys.exit(f"check_plots_offline: screenshot {sys.argv[1]} is blank ({inked:.2%} inked)")
print(f"screenshot {sys.argv[1]}: {inked:.1%} of the pixels inked")
EOF
echo "check_plots_offline: $drawn of $expected charts drawn offline in $PAGE"
