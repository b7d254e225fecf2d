#!/bin/bash
# Renders a run folder's report.html with headless Chromium, offline, and
# checks that the screenshot shows charts: enough pixels in the chart line
# colour (#1f77b4) and enough non-white pixels overall. Not part of
# `bazel test`; needs `chromium` (apt-get install chromium) and a Python with
# Pillow (PYTHON, default /opt/fixenv/bin/python).
#
#   tests/ux/check_report_renders.sh RUN_DIR [SCREENSHOT.png]
#
# A run folder to try it on:
#   bazel build //trainer/metrics:write_sample_run
#   bazel-bin/trainer/metrics/write_sample_run /tmp/sample_run
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 ]]; then
  sed -n '2,13p' "$0" >&2
  exit 2
fi
report="$(realpath "$1")/report.html"
png="${2:-$(mktemp --suffix=.png)}"
python="${PYTHON:-/opt/fixenv/bin/python}"
window="${WINDOW:-1200,2000}"
[[ -f "$report" ]] || { echo "FAIL: $report does not exist" >&2; exit 1; }
command -v chromium >/dev/null || {
  echo "FAIL: chromium is not installed (apt-get install -y chromium)" >&2
  exit 1
}

rm -f "$png"
# Every host name fails to resolve: the page must not need the network.
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars \
  --host-resolver-rules="MAP * ~NOTFOUND" \
  --window-size="$window" --screenshot="$png" "file://$report" \
  >/dev/null 2>&1 || true
[[ -s "$png" ]] || { echo "FAIL: chromium wrote no screenshot to $png" >&2; exit 1; }

"$python" - "$png" <<'PY'
import sys
from PIL import Image

path = sys.argv[1]
image = Image.open(path).convert("RGB")
width, height = image.size
pixels = image.tobytes()
line = other = 0
for i in range(0, len(pixels), 3):
    r, g, b = pixels[i], pixels[i + 1], pixels[i + 2]
    if abs(r - 0x1F) < 40 and abs(g - 0x77) < 40 and abs(b - 0xB4) < 40:
        line += 1
    elif r < 235 or g < 235 or b < 235:
        other += 1
total = width * height
print(f"{path}: {width}x{height}, {line} chart-line pixels, "
      f"{other} other non-white pixels ({100 * other / total:.1f}%)")
# Thresholds: a chart's line spans ~470 px and is ~2 px wide; one chart alone
# passes the first, an empty or broken page fails both.
if line < 1500 or other < 0.01 * total:
    sys.exit("FAIL: the screenshot does not show charts")
print("OK")
PY
