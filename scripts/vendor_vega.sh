#!/usr/bin/env bash
# Rebuilds assets/vega/offline.html: DVC's --html-template with Vega, Vega-Lite and vega-embed
# inlined, so `dvc plots show` / `dvc plots diff` pages render without a network (.dvc/config
# points plots.html_template at it). The libraries come from the npm registry (`npm pack`);
# their sha256 go to assets/vega/README.md. Usage: scripts/vendor_vega.sh [vega lite embed]
set -euo pipefail
VEGA=${1:-5.33.1} LITE=${2:-5.23.0} EMBED=${3:-6.29.0}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$ROOT/assets/vega
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

cd "$WORK"
npm pack --silent "vega@$VEGA" "vega-lite@$LITE" "vega-embed@$EMBED" >/dev/null
for spec in "vega $VEGA" "vega-lite $LITE" "vega-embed $EMBED"; do
  set -- $spec
  pkg=$1
  mkdir "$pkg" && tar xzf "$pkg-$2.tgz" -C "$pkg"
  js="$pkg/package/build/$pkg.min.js"
  # an inlined script must not close its own <script> element
  if grep -qi '</script' "$js"; then echo "error: $js contains </script" >&2; exit 1; fi
done

{
  cat <<HEAD
<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>semimed plots</title>
    <!-- vega@$VEGA, vega-lite@$LITE, vega-embed@$EMBED (BSD-3-Clause, see LICENSE beside
         this file), inlined by scripts/vendor_vega.sh: no network needed -->
HEAD
  for pkg in vega vega-lite vega-embed; do
    printf '    <script type="text/javascript">/* %s */\n' "$pkg"
    cat "$pkg/package/build/$pkg.min.js"
    printf '\n    </script>\n'
  done
  cat <<'TAIL'
    <style>
        body { font-family: sans-serif; }
        table { border-spacing: 15px; }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
TAIL
} >"$OUT/offline.html"
cp vega-lite/package/LICENSE "$OUT/LICENSE"

{
  echo "# Vendored Vega (offline plots)"
  echo
  echo "\`offline.html\` is the page template \`dvc plots show\` and \`dvc plots diff\` fill"
  echo "(\`.dvc/config\`: \`plots.html_template\`). It inlines these files of the npm packages,"
  echo "so the page renders with no network (DVC's own template loads them from a CDN):"
  echo
  echo "| package | file | sha256 |"
  echo "| --- | --- | --- |"
  for spec in "vega $VEGA" "vega-lite $LITE" "vega-embed $EMBED"; do
    set -- $spec
    sum=$(sha256sum "$1/package/build/$1.min.js" | cut -d' ' -f1)
    echo "| $1@$2 | build/$1.min.js | \`$sum\` |"
  done
  echo
  echo "All three are BSD-3-Clause, copyright University of Washington Interactive Data Lab"
  echo "(\`LICENSE\`, from vega-lite; vega and vega-embed carry the same license)."
  echo "Rebuild or update: \`scripts/vendor_vega.sh [vega-version vega-lite-version vega-embed-version]\`."
} >"$OUT/README.md"
echo "wrote $OUT/offline.html ($(du -k "$OUT/offline.html" | cut -f1) KiB)"
