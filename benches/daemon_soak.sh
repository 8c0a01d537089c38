#!/usr/bin/env bash
# One daemon driving RUNS concurrent runs against RUNS target databases, each
# soaking for SOAK with a 1 s check interval.
#
# A throwaway cluster (max_connections=MAX_CONNECTIONS) holds a state database
# and RUNS target databases target_001..; one `pgshepherd daemon` (log level
# warn, daemon: {max_active_runs: 250, poll_interval: 1s, lease_timeout: 15s})
# gets RUNS submissions over HTTP (POST /v1/runs), one per target: a trivial
# transactional migration (CREATE TABLE + a down script), backup disabled,
# baseline_samples 1, a SOAK soak at INTERVAL with CHECKS SQL checks
# (`SELECT count(*) FROM pg_stat_activity`, `SELECT 1`).
#
# While the runs are under way, about once a second: the daemon's VmRSS and threads
# (/proc/PID/status), its CPU time (utime+stime, /proc/PID/stat), the CPU time
# of the PostgreSQL server (postmaster + backends), the machine's busy time
# (/proc/stat), and how many runs are soaking / finished (state database).
# "Steady soak" is the stretch during which every run was soaking at once; the
# mean CPU figures are over that stretch.
#
# Afterwards, from the state database's `events`: the lateness of every soak
# `check_sample`: how long after its tick's scheduled instant the sample started.
# From the event's `late_ms` when it has one; otherwise (builds before `late_ms`
# existed) it is derived as elapsed_s*1000 - tick*INTERVAL - sample_ms, where
# tick = counts.total_samples and elapsed_s is taken after *all* of the tick's
# checks returned: an upper bound (it includes the other check's extra time and
# the join), printed as "derived".
#
# Usage: benches/daemon_soak.sh     (RUNS=200 SOAK=120s INTERVAL=1s CHECKS=2)
# Env:   RUNS, SOAK, INTERVAL, CHECKS (1 or 2), CHECK_SQL (the first check's query,
#        default SELECT count(*) FROM pg_stat_activity), MAX_CONNECTIONS (1000),
#        HOG=N (N CPU busy loops running meanwhile, to emulate a shared machine),
#        PGSS=1 (load pg_stat_statements and print where the server's execution
#        time went; a diagnostic, it adds its own overhead),
#        SHARED_BUFFERS (128MB), PGBIN, PGSHEPHERD, KEEP_BENCH_TMP (keep the
#        work directory with the daemon log and the samples).
# Exits non-zero only when the setup fails, never because of the figures.
# Targets (issue): p99 lateness < 100 ms, daemon RSS < 150 MB.
# Requires: jq, curl, ss (iproute2), runuser (util-linux) when run as root.

source "$(dirname "$0")/lib.sh"

RUNS=${RUNS:-200}
SOAK=${SOAK:-120s}
INTERVAL=${INTERVAL:-1s}
CHECKS=${CHECKS:-2}
CHECK_SQL=${CHECK_SQL:-SELECT count(*) FROM pg_stat_activity}
MAX_CONNECTIONS=${MAX_CONNECTIONS:-1000}
PGSS=${PGSS:-0}
HOG=${HOG:-0}
SHARED_BUFFERS=${SHARED_BUFFERS:-128MB}

to_ms() { # 1s, 500ms, 2m -> milliseconds
    case "$1" in
        *ms) echo "${1%ms}" ;;
        *s) echo $((${1%s} * 1000)) ;;
        *m) echo $((${1%m} * 60000)) ;;
        *) echo "unsupported duration $1 (use ms, s or m)" >&2; exit 1 ;;
    esac
}
INTERVAL_MS=$(to_ms "$INTERVAL")
SOAK_MS=$(to_ms "$SOAK")
TICKS=$((SOAK_MS / INTERVAL_MS))
case "$CHECKS" in 1 | 2) ;; *) echo "CHECKS must be 1 or 2" >&2; exit 1 ;; esac
for tool in jq curl sha256sum; do
    command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }
done
[ -x "$PGSHEPHERD" ] || { echo "build first: cargo build --release ($PGSHEPHERD missing)" >&2; exit 1; }

SAMPLER_PID=""
HOG_PIDS=""
cleanup() {
    for h in $HOG_PIDS; do
        kill "$h" 2>/dev/null || true
    done
    if [ -n "$SAMPLER_PID" ]; then
        kill "$SAMPLER_PID" 2>/dev/null || true
        wait "$SAMPLER_PID" 2>/dev/null || true
    fi
    stop_daemon_and_cluster
}

start_cluster
trap cleanup EXIT
W=$BENCH_TMP/work
mkdir -p "$W/backups"
write_marker_migrations "$W/migrations/soak"
# A private copy: a concurrent rebuild cannot swap the binary mid-measurement.
cp "$PGSHEPHERD" "$W/pgshepherd"
BIN=$W/pgshepherd
DATA=$BENCH_TMP/data

psql_q -c "ALTER SYSTEM SET max_connections = $MAX_CONNECTIONS" \
    -c "ALTER SYSTEM SET shared_buffers = '$SHARED_BUFFERS'"
if [ "$PGSS" = 1 ]; then
    psql_q -c "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'"
fi
as_pg "$PGBIN/pg_ctl" -D "$DATA" -l "$DATA/server.log" -w -t 60 -m fast restart >/dev/null \
    || { tail -n 20 "$DATA/server.log" >&2; exit 1; }

echo "creating the state database and $RUNS target databases ..." >&2
create_bench_databases "$RUNS"
# CREATE DATABASE (WAL_LOG strategy) writes each new database through the WAL:
# ~1.5 GB for 200 copies of template1. Checkpoint now, so that the benchmark does
# not inherit WAL-triggered checkpoints from its own setup.
psql_q -c "CHECKPOINT"
[ "$PGSS" = 1 ] && psql_q -c "CREATE EXTENSION pg_stat_statements"

write_daemon_config "$RUNS"

checks_yaml="    - name: sessions
      sql: $CHECK_SQL
      max: 100000"
if [ "$CHECKS" = 2 ]; then
    checks_yaml="$checks_yaml
    - name: one
      sql: SELECT 1
      min: 1
      max: 1"
fi
plan_for() { # $1 = target name
    cat <<YAML
name: soak-$1
target: $1
migrations: migrations/soak
backup:
  enabled: false
soak:
  duration: $SOAK
  interval: $INTERVAL
  baseline_samples: 1
  checks:
$checks_yaml
rollback:
  strategy: down
  confirm: 0s
YAML
}
plan_for target_001 >"$W/plan.yaml"
"$BIN" check "$W/plan.yaml" >/dev/null || { echo "the benchmark's plan does not check" >&2; exit 1; }

start_daemon

describe_machine
echo "server: max_connections=$(psql_q -c 'SHOW max_connections'), shared_buffers=$(psql_q -c 'SHOW shared_buffers')"
echo "runs: $RUNS, soak $SOAK at $INTERVAL ($TICKS ticks), $CHECKS SQL check(s), baseline_samples 1, backup disabled"
echo "daemon: pid $DAEMON_PID, listen $PORT, max_active_runs 250, poll_interval 1s, lease_timeout 15s, log warn"

CLK_TCK=$(getconf CLK_TCK)
sample_loop() {
    set +e +o pipefail # a process that exits mid-read must not stop the sampler
    while kill -0 "$DAEMON_PID" 2>/dev/null; do
        local procs counts
        procs=$(process_sample)
        counts=$(psql_q -d pgshepherd_state -F ' ' -c \
            "SELECT count(*) FILTER (WHERE state_name = 'soaking'), count(*) FILTER (WHERE phase = 'finished'),
                    (SELECT count(*) FROM pg_stat_activity
                      WHERE application_name = 'pgshepherd daemon' AND state <> 'idle'),
                    (SELECT count(*) FROM pg_stat_activity
                      WHERE application_name = 'pgshepherd daemon' AND wait_event_type = 'Lock') FROM runs" \
            2>/dev/null || echo "-1 -1 -1 -1")
        echo "$procs $counts"
        sleep 1
    done
}
# Columns: t rss_kb threads daemon_ticks pg_ticks machine_busy machine_total soaking finished pool_busy pool_lock
# (pool_busy: the daemon's state-database connections not idle at that instant;
# pool_lock: those of them waiting for a lock, e.g. a run's row)
sample_loop >"$W/samples" &
SAMPLER_PID=$!
sleep 2 # a couple of idle samples first

wal_stats() { # WAL position (bytes) and checkpoints so far (timed, requested)
    psql_q -F ' ' -c "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn, checkpoints_timed, checkpoints_req FROM pg_stat_bgwriter"
}
read -r wal0 ckt0 ckr0 < <(wal_stats)
[ "$PGSS" = 1 ] && psql_q -c "SELECT pg_stat_statements_reset()" >/dev/null
if [ "$HOG" -gt 0 ]; then
    # Competing CPU load, as on a machine shared with builds: HOG busy loops.
    for _ in $(seq 1 "$HOG"); do
        awk 'BEGIN { while (1) x++ }' &
        HOG_PIDS="$HOG_PIDS $!"
    done
    echo "competing load: $HOG busy loop(s) (pids$HOG_PIDS) for the whole measurement"
fi
echo "submitting $RUNS runs ..." >&2
: >"$W/submit_ms"
t_submit=$(now_s)
for i in $(seq 1 "$RUNS"); do
    tgt=$(printf 'target_%03d' "$i")
    plan_for "$tgt" >"$W/plan-$tgt.yaml"
    out=$(post_marker_bundle "$W/plan-$tgt.yaml" "$W/migrations/soak") || { echo "submit $i failed" >&2; exit 1; }
    code=${out%% *}
    if [ "$code" != 201 ]; then
        echo "submit $i: HTTP $code" >&2; cat "$W/submit.json" >&2; exit 1
    fi
    awk -v s="${out#* }" 'BEGIN { printf "%.1f\n", s * 1000 }' >>"$W/submit_ms"
done
t_submitted=$(now_s)
echo "submitted $RUNS runs in $(awk -v a="$t_submit" -v b="$t_submitted" 'BEGIN { printf "%.1f", b - a }') s; POST /v1/runs (ms): $(summary_ms <"$W/submit_ms")"

# Wait until every run is soaking; then take a snapshot of the connections.
deadline=$((SECONDS + 180))
all_soaking=0
while [ "$SECONDS" -lt "$deadline" ]; do
    n=$(psql_q -d pgshepherd_state -c "SELECT count(*) FROM runs WHERE state_name = 'soaking'")
    if [ "$n" -ge "$RUNS" ]; then
        all_soaking=1
        break
    fi
    sleep 0.5
done
t_all_soaking=$(now_s)
if [ "$all_soaking" = 1 ]; then
    echo "all $RUNS runs soaking $(awk -v a="$t_submit" -v b="$t_all_soaking" 'BEGIN { printf "%.1f", b - a }') s after the first submission"
else
    echo "NOT all runs were soaking at once within 180 s (last count $n)"
fi
sleep 5
psql_q -F ' ' -c "SELECT regexp_replace(coalesce(nullif(application_name, ''), backend_type), ' [0-9a-f]{12}$', ' <run id>'),
                           CASE WHEN datname = 'pgshepherd_state' THEN 'state' WHEN datname LIKE 'target%' THEN 'targets' ELSE datname END,
                           count(*)
                      FROM pg_stat_activity WHERE backend_type = 'client backend' GROUP BY 1, 2 ORDER BY 3 DESC" >"$W/connections"
echo "client connections to the server during the soak (application_name, database, count):"
sed 's/^/  /' "$W/connections"
echo "daemon threads: $(awk '/^Threads:/ { print $2 }' "/proc/$DAEMON_PID/status"), open fds: $(ls "/proc/$DAEMON_PID/fd" | wc -l)"

# Wait for the end of every run.
deadline=$((SECONDS + SOAK_MS / 1000 + 300))
while [ "$SECONDS" -lt "$deadline" ]; do
    n=$(psql_q -d pgshepherd_state -c "SELECT count(*) FROM runs WHERE phase = 'finished'")
    [ "$n" -ge "$RUNS" ] && break
    sleep 1
done
t_done=$(now_s)
sleep 2
# The kernel's own high-water mark of the daemon's resident memory (catches a
# peak between two samples).
HWM_KB=$(awk '/^VmHWM:/ { print $2 }' "/proc/$DAEMON_PID/status")
read -r wal1 ckt1 ckr1 < <(wal_stats)
kill "$SAMPLER_PID" 2>/dev/null || true
wait "$SAMPLER_PID" 2>/dev/null || true
SAMPLER_PID=""

echo
echo "== outcomes"
psql_q -d pgshepherd_state -F ' ' -c "SELECT phase, coalesce(outcome, '-'), count(*) FROM runs GROUP BY 1, 2 ORDER BY 1, 2" | sed 's/^/  /'
psql_q -d pgshepherd_state -F ' | ' -c "SELECT id, target, outcome, left(reason, 200) FROM runs
                                         WHERE outcome IS DISTINCT FROM 'succeeded' ORDER BY seq LIMIT 10" | sed 's/^/  not succeeded: /'
finished=$(psql_q -d pgshepherd_state -c "SELECT count(*) FROM runs WHERE phase = 'finished'")
succeeded=$(psql_q -d pgshepherd_state -c "SELECT count(*) FROM runs WHERE outcome = 'succeeded'")
echo "  first submission -> last run finished: $(awk -v a="$t_submit" -v b="$t_done" 'BEGIN { printf "%.1f", b - a }') s"

echo
echo "== check sample lateness (soak step)"
psql_q -d pgshepherd_state -F ' ' -c "
    WITH s AS (
        SELECT coalesce((event->>'late_ms')::float8,
                        (event->>'elapsed_s')::float8 * 1000
                        - (event->'counts'->>'total_samples')::float8 * $INTERVAL_MS
                        - (event->>'sample_ms')::float8) AS late,
               event ? 'late_ms' AS exact,
               (event->>'sample_ms')::float8 AS cost
          FROM events
         WHERE name = 'check_sample' AND event->>'step' = 'soak')
    SELECT count(*), count(*) FILTER (WHERE exact),
           round(percentile_cont(0.5) WITHIN GROUP (ORDER BY late)::numeric, 1),
           round(percentile_cont(0.9) WITHIN GROUP (ORDER BY late)::numeric, 1),
           round(percentile_cont(0.99) WITHIN GROUP (ORDER BY late)::numeric, 1),
           round(max(late)::numeric, 1),
           count(*) FILTER (WHERE late > 100),
           round(percentile_cont(0.5) WITHIN GROUP (ORDER BY cost)::numeric, 2),
           round(percentile_cont(0.99) WITHIN GROUP (ORDER BY cost)::numeric, 2),
           round(max(cost)::numeric, 1)
      FROM s" >"$W/lateness"
read -r n_samples n_exact l50 l90 l99 lmax n_over c50 c99 cmax <"$W/lateness"
if [ "$n_exact" = "$n_samples" ]; then
    how="from the events' late_ms"
elif [ "$n_exact" = 0 ]; then
    how="DERIVED (no late_ms in the events): elapsed_s*1000 - tick*interval - sample_ms, an upper bound"
else
    how="mixed: $n_exact of $n_samples from late_ms, the rest derived"
fi
echo "  samples: $n_samples (planned $((RUNS * CHECKS * TICKS))); lateness $how"
echo "  lateness (ms): p50 $l50  p90 $l90  p99 $l99  max $lmax; samples later than 100 ms: $n_over"
echo "  sample cost sample_ms (ms): p50 $c50  p99 $c99  max $cmax"
# Lateness by second of the soak, for the worst seconds: is it a start-up burst or steady?
psql_q -d pgshepherd_state -F ' ' -c "
    WITH s AS (
        SELECT date_trunc('second', ts) AS sec,
               coalesce((event->>'late_ms')::float8,
                        (event->>'elapsed_s')::float8 * 1000
                        - (event->'counts'->>'total_samples')::float8 * $INTERVAL_MS
                        - (event->>'sample_ms')::float8) AS late
          FROM events WHERE name = 'check_sample' AND event->>'step' = 'soak')
    SELECT to_char(sec, 'HH24:MI:SS'), count(*), round(max(late)::numeric, 1),
           round(percentile_cont(0.99) WITHIN GROUP (ORDER BY late)::numeric, 1)
      FROM s GROUP BY sec ORDER BY max(late) DESC LIMIT 5" \
    | sed 's/^/  worst second (time, samples, max ms, p99 ms): /'

echo
echo "== daemon resources"
awk -v tck="$CLK_TCK" -v runs="$RUNS" -v t0="$t_submit" -v hwm="$HWM_KB" '
    { t[NR] = $1; rss[NR] = $2; thr[NR] = $3; d[NR] = $4; p[NR] = $5; mb[NR] = $6; mt[NR] = $7; soak[NR] = $8; fin[NR] = $9; pool[NR] = $10; plock[NR] = $11
      if ($2 > peak) { peak = $2; peak_t = $1 }
      if (first_idle == "" ) first_idle = $2 }
    END {
        n = NR
        a = 0; b = 0
        for (i = 1; i <= n; i++) if (soak[i] >= runs) { if (!a) a = i; b = i }
        what = "every run soaking"
        if (!a || b - a < 3) {
            for (i = 1; i <= n; i++) if (soak[i] >= 0.9 * runs) { if (!a) a = i; b = i }
            what = ">= 90% of the runs soaking"
        }
        if (!a || b == a) { a = 1; b = n; what = "the whole measurement" }
        dt = t[b] - t[a]
        if (hwm > peak) peak = hwm
        printf "  RSS: idle before submissions %.1f MB, peak %.1f MB (VmHWM; highest sample %.1f MB at +%.0f s), at the end %.1f MB\n", first_idle / 1024, peak / 1024, maxr(1, n) / 1024, peak_t - t0, rss[n] / 1024
        maxthr = 0; for (i = 1; i <= n; i++) if (thr[i] > maxthr) maxthr = thr[i]
        printf "  threads: at most %d\n", maxthr
        printf "  steady window (%s): %.0f s\n", what, dt
        printf "  CPU over the steady window, %% of one core: daemon %.1f, PostgreSQL server %.1f; machine busy %.1f%% of %d cores\n", \
            100 * (d[b] - d[a]) / tck / dt, 100 * (p[b] - p[a]) / tck / dt, 100 * (mb[b] - mb[a]) / (mt[b] - mt[a]), '"$(nproc)"'
        dtot = t[n] - t[1]
        printf "  CPU over the whole measurement (%.0f s, submissions and run set-up included): daemon %.1f%% of one core, server %.1f%%\n", \
            dtot, 100 * (d[n] - d[1]) / tck / dtot, 100 * (p[n] - p[1]) / tck / dtot
        printf "  RSS during the steady window: min %.1f MB, max %.1f MB\n", minr(a, b) / 1024, maxr(a, b) / 1024
        ps = 0; pm = 0; pf = 0; pn = 0
        ls = 0
        for (i = a; i <= b; i++) { pn++; ps += pool[i]; ls += plock[i]; if (pool[i] > pm) pm = pool[i]; if (pool[i] >= 31) pf++ }
        printf "  state pool (31 connections) busy during the steady window: mean %.1f (of which waiting for a lock %.1f), max %d; all busy in %d of %d samples\n", ps / pn, ls / pn, pm, pf, pn
        printf "STEADY %.1f %.1f %.1f\n", 100 * (d[b] - d[a]) / tck / dt, peak / 1024, dt > "/dev/stderr"
    }
    function minr(a, b,  i, m) { m = rss[a]; for (i = a; i <= b; i++) if (rss[i] < m) m = rss[i]; return m }
    function maxr(a, b,  i, m) { m = rss[a]; for (i = a; i <= b; i++) if (rss[i] > m) m = rss[i]; return m }
' "$W/samples" 2>"$W/steady"
read -r _ cpu_mean rss_peak _ <"$W/steady"

echo
echo "== state database"
awk -v a="$wal0" -v b="$wal1" -v t0="$t_submit" -v t1="$t_done" \
    'BEGIN { printf "  WAL written from the first submission to the last run finished: %.0f MB (%.2f MB/s)\n", (b - a) / 1048576, (b - a) / 1048576 / (t1 - t0) }'
echo "  checkpoints meanwhile: $((ckt1 - ckt0)) timed, $((ckr1 - ckr0)) requested (WAL volume)"
psql_q -d pgshepherd_state -F ' ' -c "SELECT pg_size_pretty(pg_database_size(current_database())),
        pg_size_pretty(pg_total_relation_size('runs')), pg_size_pretty(pg_total_relation_size('events')),
        (SELECT count(*) FROM events)" \
    | awk '{ printf "  size: database %s %s, runs table %s %s (%d rows), events table %s %s (%d rows)\n", $1, $2, $3, $4, '"$RUNS"', $5, $6, $7 }'

if [ "$PGSS" = 1 ]; then
    echo "  server execution time by statement (pg_stat_statements, all databases; calls, total s, mean ms, rows, query):"
    psql_q -F ' | ' -c "SELECT sum(calls), round(sum(total_exec_time)::numeric / 1000, 1),
                               round((sum(total_exec_time) / sum(calls))::numeric, 3), sum(rows),
                               left(regexp_replace(query, '\s+', ' ', 'g'), 110)
                          FROM pg_stat_statements GROUP BY query ORDER BY 2 DESC LIMIT 15" | sed 's/^/    /'
    psql_q -c "SELECT 'total: ' || round(sum(total_exec_time)::numeric / 1000, 1) || ' s of execution in ' || sum(calls) || ' statements' FROM pg_stat_statements" | sed 's/^/    /'
fi

echo
echo "== daemon log (warn and above) and server log"
warns=$(grep -c '"level":"WARN"' "$W/daemon.log" || true)
errors=$(grep -c '"level":"ERROR"' "$W/daemon.log" || true)
echo "  daemon log: $warns warnings, $errors errors, $(wc -l <"$W/daemon.log") lines"
jq -r 'select(.level == "WARN" or .level == "ERROR") | "\(.level) \(.fields.message // .message // "")"' "$W/daemon.log" 2>/dev/null \
    | sed -E 's/[0-9a-f]{12}/<id>/g' | sort | uniq -c | sort -rn | head -n 10 | sed 's/^/  /' || true
grep -v '^{' "$W/daemon.log" | head -n 5 | sed 's/^/  (non-JSON) /' || true
echo "  server log: $(grep -c 'too many clients\|remaining connection slots' "$DATA/server.log" || true) connection-limit refusals, $(grep -c 'ERROR\|FATAL' "$DATA/server.log" || true) ERROR/FATAL lines"
grep -E 'checkpoint (starting|complete)|checkpoints are occurring' "$DATA/server.log" \
    | awk -v since="$(date -u -d "@${t_submit%.*}" '+%F %T')" 'substr($0, 1, 19) >= since' \
    | sed -E 's/; (sync files|distance).*//' | sed 's/^/  during the runs: /' || true
grep -E 'ERROR|FATAL' "$DATA/server.log" | sed -E 's/^[0-9-]+ [0-9:.]+ [A-Z]+ \[[0-9]+\] //' | sort | uniq -c | sort -rn | head -n 5 | sed 's/^/  /' || true

echo
echo "== summary"
echo "  runs: $RUNS submitted, $finished finished, $succeeded succeeded"
echo "  check samples: $n_samples (planned $((RUNS * CHECKS * TICKS))), lateness $( [ "$n_exact" = "$n_samples" ] && echo 'late_ms' || echo 'derived')"
echo "  lateness p50 / p99 / max: $l50 / $l99 / $lmax ms   (target p99 < 100 ms: $(awk -v x="$l99" 'BEGIN { print (x < 100) ? "met" : "MISSED" }'))"
echo "  daemon peak RSS: $rss_peak MB   (target < 150 MB: $(awk -v x="$rss_peak" 'BEGIN { print (x < 150) ? "met" : "MISSED" }'))"
echo "  daemon mean CPU while all runs soak: $cpu_mean % of one core"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
