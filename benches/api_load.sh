#!/usr/bin/env bash
# HTTP API load: GET /v1/runs/{id} at increasing concurrency.
#
# A throwaway cluster holds a state database and TARGETS target databases; one
# `pgshepherd daemon` (log level warn, daemon: {max_active_runs: 250,
# poll_interval: 1s, lease_timeout: 15s}, so a state pool of 31 connections)
# gets TARGETS submissions over HTTP so that `runs` and `events` are not empty:
# TARGETS-1 short runs (5 s soak at 1 s, one check) and one "big" run (a 20 s
# soak at 100 ms with two checks: about 400 check_sample events). Once every run
# has finished, the load generator (examples/api_load.rs, a second process)
# sends GET /v1/runs/{big run} back to back from C concurrent workers for
# SECONDS, for each C in LEVELS, after a 2 s unmeasured warm-up each.
#
# Per level: requests/s, latency p50/p90/p99/max (send to end of body), errors,
# and the CPU time over the measured part (% of one core) of the daemon, the
# PostgreSQL server (postmaster + backends), the load generator itself, and the
# machine's busy time. Everything shares the same cores.
#
# Usage: cargo build --release && cargo build --release --example api_load
#        benches/api_load.sh                (LEVELS="1 8 32 64" SECONDS_PER_LEVEL=20)
# Env:   LEVELS, SECONDS_PER_LEVEL, TARGETS (20), ROUTE (run: GET /v1/runs/{id},
#        the default; list: GET /v1/runs), PGBIN, PGSHEPHERD, API_LOAD (the
#        generator binary, default target/release/examples/api_load), KEEP_BENCH_TMP.
# Exits non-zero only when the setup fails.
# Requires: jq, curl, ss (iproute2), runuser (util-linux) when run as root.

source "$(dirname "$0")/lib.sh"

LEVELS=${LEVELS:-1 8 32 64}
SECONDS_PER_LEVEL=${SECONDS_PER_LEVEL:-20}
TARGETS=${TARGETS:-20}
ROUTE=${ROUTE:-run}
API_LOAD=${API_LOAD:-$REPO/target/release/examples/api_load}

for tool in jq curl sha256sum; do
    command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }
done
[ -x "$PGSHEPHERD" ] || { echo "build first: cargo build --release ($PGSHEPHERD missing)" >&2; exit 1; }
[ -x "$API_LOAD" ] || { echo "build first: cargo build --release --example api_load ($API_LOAD missing)" >&2; exit 1; }
[ "$TARGETS" -ge 2 ] || { echo "TARGETS must be at least 2" >&2; exit 1; }

start_cluster
trap stop_daemon_and_cluster EXIT
W=$BENCH_TMP/work
DATA=$BENCH_TMP/data
mkdir -p "$W/backups"
write_marker_migrations "$W/migrations/load"
cp "$PGSHEPHERD" "$W/pgshepherd"
cp "$API_LOAD" "$W/api_load"
BIN=$W/pgshepherd

create_bench_databases "$TARGETS"
write_daemon_config "$TARGETS"

plan_for() { # $1 = target, $2 = soak duration, $3 = interval, $4 = 1 or 2 checks
    cat <<YAML
name: load-$1
target: $1
migrations: migrations/load
backup:
  enabled: false
soak:
  duration: $2
  interval: $3
  baseline_samples: 1
  checks:
    - name: sessions
      sql: SELECT count(*) FROM pg_stat_activity
      max: 100000
YAML
    if [ "$4" = 2 ]; then
        cat <<YAML
    - name: one
      sql: SELECT 1
      min: 1
      max: 1
YAML
    fi
    cat <<YAML
rollback:
  strategy: down
  confirm: 0s
YAML
}

start_daemon

submit() { # $1 = plan file; prints the run id
    local out
    out=$(post_marker_bundle "$1" "$W/migrations/load")
    [ "${out%% *}" = 201 ] || { echo "submit $1: HTTP ${out%% *}" >&2; cat "$W/submit.json" >&2; return 1; }
    jq -r .id "$W/submit.json"
}

echo "submitting $TARGETS runs and waiting for them to finish ..." >&2
plan_for target_001 20s 100ms 2 >"$W/plan-big.yaml"
"$BIN" check "$W/plan-big.yaml" >/dev/null || { echo "the big plan does not check" >&2; exit 1; }
BIG=$(submit "$W/plan-big.yaml")
for i in $(seq 2 "$TARGETS"); do
    tgt=$(printf 'target_%03d' "$i")
    plan_for "$tgt" 5s 1s 1 >"$W/plan-$tgt.yaml"
    submit "$W/plan-$tgt.yaml" >/dev/null
done
deadline=$((SECONDS + 180))
until [ "$(psql_q -d pgshepherd_state -c "SELECT count(*) FROM runs WHERE phase <> 'finished'")" = 0 ]; do
    [ "$SECONDS" -lt "$deadline" ] || { echo "the runs did not finish within 180 s" >&2; exit 1; }
    sleep 1
done

describe_machine
echo "daemon: pid $DAEMON_PID, listen $PORT, max_active_runs 250 (state pool 31), log warn; idle (every run finished)"
echo "state database: $(psql_q -d pgshepherd_state -c "SELECT count(*) FROM runs") runs ($(psql_q -d pgshepherd_state -F ' ' -c "SELECT string_agg(o || ' ' || n, ', ') FROM (SELECT coalesce(outcome, phase) o, count(*) n FROM runs GROUP BY 1) x")), $(psql_q -d pgshepherd_state -c "SELECT count(*) FROM events") events; the big run $BIG: $(psql_q -d pgshepherd_state -c "SELECT count(*) FROM events WHERE run_id = '$BIG'") events, $(psql_q -d pgshepherd_state -c "SELECT count(*) FROM events WHERE run_id = '$BIG' AND name = 'check_sample'") check_sample"
case "$ROUTE" in
    run) URL=$S/v1/runs/$BIG ;;
    list) URL=$S/v1/runs ;;
    *) echo "ROUTE must be run or list" >&2; exit 1 ;;
esac
echo "load: GET ${URL#"$S"}, $SECONDS_PER_LEVEL s per level after a 2 s warm-up, levels: $LEVELS"

CLK_TCK=$(getconf CLK_TCK)
# Seconds of CPU used by this shell's finished children (the generator), from `times`.
# Call as `times >"$W/times"; children_cpu` (in this shell: `times` in a subshell
# would report the subshell's children).
children_cpu() {
    tail -n 1 "$W/times" | awk '{ n = 0; for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); n += a[1] * 60 + a[2] } print n }'
}

echo
printf '%-11s %9s %8s %8s %8s %8s %7s %11s %11s %11s %9s\n' concurrency 'req/s' 'p50 ms' 'p90 ms' 'p99 ms' 'max ms' errors 'daemon CPU' 'server CPU' 'client CPU' 'machine'
: >"$W/results"
for c in $LEVELS; do
    times >"$W/times"
    g0=$(children_cpu)
    "$W/api_load" --url "$URL" --token "$TOKEN" --concurrency "$c" --seconds "$SECONDS_PER_LEVEL" \
        --warmup 2 --json >"$W/level-$c.json" 2>"$W/level-$c.err" &
    gen=$!
    sleep 2 # the warm-up
    d0=$(daemon_ticks); p0=$(pg_ticks); read -r mb0 mt0 < <(machine_ticks); t0=$(now_s)
    sleep "$SECONDS_PER_LEVEL"
    d1=$(daemon_ticks); p1=$(pg_ticks); read -r mb1 mt1 < <(machine_ticks); t1=$(now_s)
    wait "$gen" || { echo "the load generator failed:" >&2; cat "$W/level-$c.err" >&2; exit 1; }
    times >"$W/times"
    g1=$(children_cpu)
    jq -r --arg dc "$(awk -v a="$d0" -v b="$d1" -v t0="$t0" -v t1="$t1" -v k="$CLK_TCK" 'BEGIN { printf "%.0f%%", 100 * (b - a) / k / (t1 - t0) }')" \
        --arg pc "$(awk -v a="$p0" -v b="$p1" -v t0="$t0" -v t1="$t1" -v k="$CLK_TCK" 'BEGIN { printf "%.0f%%", 100 * (b - a) / k / (t1 - t0) }')" \
        --arg gc "$(awk -v a="$g0" -v b="$g1" -v s="$((SECONDS_PER_LEVEL + 2))" 'BEGIN { printf "%.0f%%", 100 * (b - a) / s }')" \
        --arg mc "$(awk -v a="$mb0" -v b="$mb1" -v x="$mt0" -v y="$mt1" 'BEGIN { printf "%.0f%%", 100 * (b - a) / (y - x) }')" \
        '[.concurrency, .rps, .p50_ms, .p90_ms, .p99_ms, .max_ms, .errors, $dc, $pc, $gc, $mc] | @tsv' "$W/level-$c.json" \
        | awk -F '\t' '{ printf "%-11s %9s %8s %8s %8s %8s %7s %11s %11s %11s %9s\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11 }' \
        | tee -a "$W/results"
    jq -r '.error_samples[]? | "  error sample: " + .' "$W/level-$c.json"
done
echo "(CPU: % of one core over the measured part; the client's is its whole run, warm-up included, over"
echo " warm-up + measured time, plus the script's tiny /proc readers; machine: busy share of all $(nproc) cores. Body: $(jq -r .body_bytes "$W/level-$(echo "$LEVELS" | awk '{ print $1 }').json") bytes.)"

echo
warns=$(grep -c '"level":"WARN"' "$W/daemon.log" || true)
errors=$(grep -c '"level":"ERROR"' "$W/daemon.log" || true)
echo "daemon log: $warns warnings, $errors errors; server log: $(grep -cE 'ERROR|FATAL' "$DATA/server.log" || true) ERROR/FATAL lines"
jq -r 'select(.level == "WARN" or .level == "ERROR") | "\(.level) \(.fields.message // "")"' "$W/daemon.log" 2>/dev/null \
    | sort | uniq -c | sort -rn | head -n 5 | sed 's/^/  /' || true
echo "daemon RSS after the load: $(awk '/^VmRSS:/ { printf "%.1f MB", $2 / 1024 }' "/proc/$DAEMON_PID/status"), threads $(awk '/^Threads:/ { print $2 }' "/proc/$DAEMON_PID/status")"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
