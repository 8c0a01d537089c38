#!/usr/bin/env bash
# The web page's charts on a long soak (issue 13): four checks of an hour at a
# 1 s interval (3,600 samples each, a breach every 500) in a real daemon's state
# database; the series route's latency (the daemon's debug build, as the test
# suite runs it) and the run page's time from navigation until every chart is
# drawn in headless Chromium. Prints one line of figures; asserts no time.
#
# Usage: benches/web.sh     Requires: chromium, chromium-driver (as .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --quiet --test web -- --ignored --exact chart_benchmark --nocapture 2>&1 |
    grep -E '^web bench:|panicked|FAILED'
