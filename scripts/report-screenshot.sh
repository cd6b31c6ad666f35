#!/usr/bin/env bash
# Render `flowlog report` in headless Chromium (Debian's package) and check it.
#
#   scripts/report-screenshot.sh            # -> target/report.html, target/report.png
#
# Generates sample logs (the flowlog-query `gen_logs` example: 60 one-minute
# windows ending now), runs `flowlog report` over them, then opens the page in
# headless Chromium with networking off, and fails unless:
#   * the console shows no message at all (errors, "Uncaught ..."),
#   * the rendered DOM holds every chart (one <svg class="chart ..."> per panel
#     with a chart) and the charts drew (polylines, bars),
#   * the page refers to nothing outside itself (no script, stylesheet, image,
#     frame or URL but the SVG namespace), so it needs no network.
# Needs `chromium` (apt-get install -y chromium); not part of CI.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
target=${CARGO_TARGET_DIR:-$root/target}
work=$(mktemp -d)
profile=$(mktemp -d)
trap 'rm -rf "$work" "$profile"' EXIT

command -v chromium >/dev/null || {
    echo "chromium is not installed: apt-get install -y chromium" >&2
    exit 1
}

echo "== building flowlog and the sample generator" >&2
cargo build -q -p flowlog-agent --bin flowlog
cargo build -q -p flowlog-query --bin flowlog-query  # what `flowlog report` runs
cargo build -q -p flowlog-query --example gen_logs

echo "== sample logs" >&2
"$target/debug/examples/gen_logs" "$work/logs" 60 12 7

echo "== flowlog report" >&2
"$target/debug/flowlog" report --logs "$work/logs" --out "$target/report.html" \
    --cidr vpc-1=10.0.0.0/24 --cidr vpc-2=10.1.0.0/24 --cidr office=192.168.0.0/16 \
    > "$work/terminal.txt"
grep -q "== CIDR to CIDR ==" "$work/terminal.txt"
expected=$(grep -o '<svg class="chart' "$target/report.html" | wc -l)
echo "   $(wc -c < "$target/report.html") bytes, $expected charts" >&2

chrome=(chromium --headless --no-sandbox --disable-gpu --disable-background-networking
    --disable-component-update --disable-sync --no-first-run --disable-default-apps
    --disable-extensions --user-data-dir="$profile" --enable-logging=stderr --v=0
    --hide-scrollbars)

echo "== DOM and console" >&2
"${chrome[@]}" --virtual-time-budget=5000 --dump-dom "file://$target/report.html" \
    > "$work/dom.html" 2> "$work/console.log" || true
# The page has no script: any console message (Chromium logs them all as
# "INFO:CONSOLE", errors and "Uncaught ..." included) or failed load is a fault.
if grep -E ":CONSOLE|Uncaught|net::ERR_" "$work/console.log"; then
    echo "FAIL: console messages (above)" >&2
    exit 1
fi
# Nothing to fetch: no script, stylesheet, image or frame, and no URL but the
# SVG namespace.
if grep -Eo '<script|<link|<img|<iframe|@import|url\(|https?://[^"]*' "$target/report.html" \
    | grep -v '^http://www.w3.org/2000/svg$'; then
    echo "FAIL: the page refers to outside resources (above)" >&2
    exit 1
fi
rendered=$(grep -o '<svg class="chart' "$work/dom.html" | wc -l)
lines=$(grep -o '<polyline' "$work/dom.html" | wc -l)
bars=$(grep -o 'class="bar"' "$work/dom.html" | wc -l)
echo "   rendered DOM: $rendered charts, $lines lines, $bars bars/cells" >&2
if [ "$rendered" -ne "$expected" ] || [ "$rendered" -lt 10 ] || [ "$lines" -lt 4 ] || [ "$bars" -lt 20 ]; then
    echo "FAIL: charts missing from the rendered page" >&2
    exit 1
fi

echo "== screenshot" >&2
"${chrome[@]}" --window-size=1200,7600 --screenshot="$target/report.png" \
    "file://$target/report.html" 2> "$work/shot.log" >/dev/null || true
if [ ! -s "$target/report.png" ]; then
    cat "$work/shot.log" >&2
    echo "FAIL: no screenshot" >&2
    exit 1
fi
echo "OK: $target/report.html, $target/report.png" >&2
