#!/usr/bin/env bash
# What a soak costs the database it watches: the CPU time pgshepherd's own
# sessions use on the TARGET server per second of soak, per run.
#
# Two throwaway clusters: one holds only the RUNS target databases
# target_001.. (each a copy of the demo's seed: job_execution_summaries, 20,000
# rows, frozen and analysed), the other the daemon's state database, so that
# nothing but the runs' own sessions connects to the target cluster. One
# `pgshepherd daemon` gets RUNS submissions over HTTP, one per target: a trivial
# transactional migration (CREATE TABLE + a down script), backup disabled,
# baseline_samples 1, and a SOAK soak at INTERVAL with the checks of the demo
# plan (plans/job-summaries-cancel-reason.yaml, copied from the file: the
# `unknown_cancel_reason_share` SQL check and the `rollbacks_per_second` and
# `lock_waiting_sessions` builtins). No application load runs on the targets.
#
# Accounting, per backend: every SAMPLE_EVERY seconds the script lists the
# target postmaster's children (`ps --ppid`; a client backend's title names its
# database) and reads utime+stime of each from /proc/PID/stat; every
# LABEL_EVERY seconds it reads pg_stat_activity (from the `postgres` database,
# which pgshepherd does not use) to name each backend by its application_name
# (`pgshepherd-check`, `pgshepherd run <id>`, ...). It never runs SQL in a target
# database, so every client backend of a target database is one of the runs'.
# A backend's CPU over the window is its last reading minus its reading at the
# window's start (0 when it was born inside the window); a backend that exits
# loses at most its last SAMPLE_EVERY, and the number born in the window is
# printed (a session opened per sample would show here). Cross-check: the CPU
# of the whole target cluster (postmaster with its reaped children + live
# children), which also holds the background processes and the script's own
# pg_stat_activity reads. The window is the stretch during which every run was
# soaking (from the state database, on the other cluster).
#
# Usage: benches/soak_cost.sh                  (RUNS=1 SOAK=151s INTERVAL=1s)
#        RUNS=200 benches/soak_cost.sh         (SOAK=350s: submitting 200 runs takes
#                                               20-200 s, and the figures need them all
#                                               soaking at once)
# Env:   RUNS, SOAK, INTERVAL, SAMPLE_EVERY (0.5 s), LABEL_EVERY (5 s),
#        MAX_CONNECTIONS (of the target cluster; default max(100, 4*RUNS+50):
#        each run holds a lock session and one session per check),
#        SHARED_BUFFERS (target cluster; default max(128, 8*RUNS) MB, so every
#        target's table stays in shared buffers as it would on its own server),
#        PGSS=1 (load pg_stat_statements with track_planning on the target
#        cluster and print each statement's server time per run and second: the
#        per-check split; a diagnostic with overhead of its own),
#        PGBIN, PGSHEPHERD (default target/release/pgshepherd; build with
#        `cargo build --release`), KEEP_BENCH_TMP.
# Exits non-zero only when the setup fails, never because of the figures.
# Target (issue 10): under 1 % of one core per run at a 1 s interval.
# Requires: jq, curl, ps (procps), ss (iproute2), runuser (util-linux) as root.

source "$(dirname "$0")/lib.sh"

RUNS=${RUNS:-1}
SOAK=${SOAK:-$((150 + RUNS))s}
INTERVAL=${INTERVAL:-1s}
case "$SOAK" in *[0-9]s) ;; *) echo "SOAK in seconds, e.g. 150s" >&2; exit 1 ;; esac
case "$INTERVAL" in
    *ms) INTERVAL_MS=${INTERVAL%ms} ;;
    *s) INTERVAL_MS=$((${INTERVAL%s} * 1000)) ;;
    *) echo "INTERVAL in s or ms, e.g. 1s" >&2; exit 1 ;;
esac
SAMPLE_EVERY=${SAMPLE_EVERY:-0.5}
LABEL_EVERY=${LABEL_EVERY:-5}
MAX_CONNECTIONS=${MAX_CONNECTIONS:-$((4 * RUNS + 50 > 100 ? 4 * RUNS + 50 : 100))}
SHARED_BUFFERS=${SHARED_BUFFERS:-$((8 * RUNS > 128 ? 8 * RUNS : 128))MB}
PGSS=${PGSS:-0}
PLAN_SOURCE=$REPO/plans/job-summaries-cancel-reason.yaml
SEED=$REPO/src/demo/seed.sql

for tool in jq curl ps sha256sum; do
    command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }
done
[ -x "$PGSHEPHERD" ] || { echo "build first: cargo build --release ($PGSHEPHERD missing)" >&2; exit 1; }
[ "$RUNS" -ge 1 ] && [ "$RUNS" -le 250 ] || { echo "RUNS must be 1..250 (the daemon's max_active_runs)" >&2; exit 1; }

SAMPLER_PID=""
cleanup() {
    if [ -n "$SAMPLER_PID" ]; then
        kill "$SAMPLER_PID" 2>/dev/null || true
        wait "$SAMPLER_PID" 2>/dev/null || true
    fi
    stop_daemon_and_cluster
}

start_cluster # the targets' cluster: psql_q, db_url and PGPORT point at it
trap cleanup EXIT
start_extra_cluster state
STATE_PORT=$EXTRA_PORT
STATE_URL="postgres://postgres@127.0.0.1:$STATE_PORT/pgshepherd_state"
W=$BENCH_TMP/work
mkdir -p "$W/backups"
write_marker_migrations "$W/migrations/soak"
# A private copy: a concurrent rebuild cannot swap the binary mid-measurement.
cp "$PGSHEPHERD" "$W/pgshepherd"
BIN=$W/pgshepherd
DATA=$BENCH_TMP/data
STATE_DATA=$BENCH_TMP/state/data

psql_q -c "ALTER SYSTEM SET max_connections = $MAX_CONNECTIONS" \
    -c "ALTER SYSTEM SET shared_buffers = '$SHARED_BUFFERS'"
if [ "$PGSS" = 1 ]; then
    psql_q -c "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'"
fi
as_pg "$PGBIN/pg_ctl" -D "$DATA" -l "$DATA/server.log" -w -t 60 -m fast restart >/dev/null \
    || { tail -n 20 "$DATA/server.log" >&2; exit 1; }
if [ "$PGSS" = 1 ]; then
    # Known to the server only once the library is loaded.
    psql_q -c "CREATE EXTENSION pg_stat_statements" \
        -c "ALTER SYSTEM SET pg_stat_statements.track_planning = on" -c "SELECT pg_reload_conf()" >/dev/null
fi
psql_q -p "$STATE_PORT" -c "CREATE DATABASE pgshepherd_state"

echo "creating $RUNS target databases from the demo's seed ..." >&2
psql_q -c "CREATE DATABASE jobs_seed"
psql_q -d jobs_seed -f "$SEED" >/dev/null
# Frozen and analysed once: no copy needs autovacuum (or sets hint bits) during
# the soak, which would land in the cluster's background CPU.
psql_q -d jobs_seed -c "VACUUM (FREEZE, ANALYZE)"
for i in $(seq 1 "$RUNS"); do
    printf 'CREATE DATABASE target_%03d TEMPLATE jobs_seed STRATEGY FILE_COPY;\n' "$i"
done | psql_q >/dev/null
psql_q -c "CHECKPOINT"
TABLE_SIZE=$(psql_q -d target_001 -c "SELECT pg_size_pretty(pg_total_relation_size('job_execution_summaries'))")

write_daemon_config "$RUNS"

# The demo plan's checks, exactly as in the file: the lines under `soak: checks:`.
checks_yaml=$(awk '/^  checks:/ { on = 1; next } /^[^ #]/ { on = 0 } on' "$PLAN_SOURCE")
[ -n "$checks_yaml" ] || { echo "no checks found in $PLAN_SOURCE" >&2; exit 1; }
plan_for() { # $1 = target name
    cat <<YAML
name: soakcost-$1
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
CHECK_NAMES=$(grep -E '^    - name: ' <<<"$checks_yaml" | sed 's/.*name: //' | paste -sd, | sed 's/,/, /g')

start_daemon

describe_machine
echo "target cluster: max_connections=$(psql_q -c 'SHOW max_connections'), shared_buffers=$(psql_q -c 'SHOW shared_buffers'), $RUNS target database(s), job_execution_summaries $TABLE_SIZE each; no application load"
echo "state database: a cluster of its own (port $STATE_PORT)"
echo "runs: $RUNS, soak $SOAK at $INTERVAL, the demo plan's checks ($CHECK_NAMES), baseline_samples 1, backup disabled"
echo "accounting: /proc every ${SAMPLE_EVERY}s, pg_stat_activity labels every ${LABEL_EVERY}s$([ "$PGSS" = 1 ] && echo ', pg_stat_statements loaded')"

TARGET_PM=$(head -n 1 "$DATA/postmaster.pid")
STATE_PM=$(head -n 1 "$STATE_DATA/postmaster.pid")
CLK_TCK=$(getconf CLK_TCK)

# CPU ticks of a whole cluster: the postmaster with its reaped children, plus its
# live children.
tree_ticks() { # $1 = postmaster pid
    local pids
    pids=$(pgrep -P "$1" | sed 's|.*|/proc/&/stat|')
    {
        awk '{ print $14 + $15 + $16 + $17 }' "/proc/$1/stat"
        # shellcheck disable=SC2086 # one path per child; cat skips those that just exited
        cat $pids 2>/dev/null | awk '{ print $14 + $15 }' || true
    } | awk '{ s += $1 } END { print s + 0 }'
}

sample_loop() {
    set +e +o pipefail # a process that exits mid-read must not stop the sampler
    local n=0 t label_every_n
    label_every_n=$(awk -v l="$LABEL_EVERY" -v s="$SAMPLE_EVERY" 'BEGIN { k = int(l / s + 0.5); print (k < 1) ? 1 : k }')
    while kill -0 "$DAEMON_PID" 2>/dev/null; do
        t=$(now_s)
        # One line per process of the target cluster: t pid ticks class, where
        # class is the database of a client backend ("postgres: USER DB HOST(PORT)
        # STATE"), "bg:NAME" for a background process, "postmaster" (its ticks
        # include its reaped children's) for the postmaster.
        {
            echo "$TARGET_PM postgres: postmaster"
            ps -o pid=,args= --ppid "$TARGET_PM"
        } | awk -v t="$t" -v pm="$TARGET_PM" '{
            pid = $1; f = "/proc/" pid "/stat"
            if ((getline line < f) <= 0) { close(f); next }
            close(f); split(line, s, " ")
            if (pid == pm) { ticks = s[14] + s[15] + s[16] + s[17]; class = "postmaster" }
            else {
                ticks = s[14] + s[15]
                class = ($5 ~ /\([0-9]+\)$/ || $5 == "[local]") ? $4 : "bg:" $3
            }
            print t, pid, ticks, class
        }' >>"$W/procs"
        # t target_tree state_tree daemon machine_busy machine_total soaking finished
        echo "$t $(tree_ticks "$TARGET_PM") $(tree_ticks "$STATE_PM") $(daemon_ticks 2>/dev/null || echo 0) $(machine_ticks)" \
            "$(psql_q -p "$STATE_PORT" -d pgshepherd_state -F ' ' -c \
                "SELECT count(*) FILTER (WHERE state_name = 'soaking'), count(*) FILTER (WHERE phase = 'finished') FROM runs" \
                2>/dev/null || echo '-1 -1')" >>"$W/ticks"
        if [ $((n % label_every_n)) = 0 ]; then
            psql_q -F '|' -c "SELECT pid, regexp_replace(coalesce(nullif(application_name, ''), '(none)'), ' [0-9a-f]{12}$', ' <run id>')
                                FROM pg_stat_activity WHERE datname LIKE 'target%'" >>"$W/labels" 2>/dev/null
        fi
        n=$((n + 1))
        sleep "$SAMPLE_EVERY"
    done
}
sample_loop &
SAMPLER_PID=$!
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

echo "submitting $RUNS run(s) ..." >&2
t_submit=$(now_s)
for i in $(seq 1 "$RUNS"); do
    tgt=$(printf 'target_%03d' "$i")
    plan_for "$tgt" >"$W/plan-$tgt.yaml"
    out=$(post_marker_bundle "$W/plan-$tgt.yaml" "$W/migrations/soak") || { echo "submit $i failed" >&2; exit 1; }
    code=${out%% *}
    if [ "$code" != 201 ]; then
        echo "submit $i: HTTP $code" >&2; cat "$W/submit.json" >&2; exit 1
    fi
done
echo "submitted $RUNS run(s) in $(awk -v a="$t_submit" -v b="$(now_s)" 'BEGIN { printf "%.1f", b - a }') s"

soaking() { psql_q -p "$STATE_PORT" -d pgshepherd_state -c "SELECT count(*) FROM runs WHERE state_name = 'soaking'"; }
deadline=$((SECONDS + 300))
while [ "$SECONDS" -lt "$deadline" ] && [ "$(soaking)" -lt "$RUNS" ]; do
    sleep 0.5
done
if [ "$(soaking)" -ge "$RUNS" ]; then
    echo "all $RUNS run(s) soaking $(awk -v a="$t_submit" -v b="$(now_s)" 'BEGIN { printf "%.1f", b - a }') s after the first submission"
    if [ "$PGSS" = 1 ]; then
        psql_q -c "SELECT pg_stat_statements_reset()" >/dev/null
        t_pgss0=$(now_s)
        # Read the statistics as soon as the first run leaves its soak, so that
        # they cover only the stretch during which every run soaked.
        while [ "$(soaking)" -ge "$RUNS" ]; do sleep 0.5; done
        t_pgss1=$(now_s)
        psql_q -F '|' -c "
            SELECT sum(calls), sum(total_exec_time), sum(total_plan_time),
                   regexp_replace(query, '\s+', ' ', 'g')
              FROM pg_stat_statements
             WHERE dbid IN (SELECT oid FROM pg_database WHERE datname LIKE 'target%')
             GROUP BY query ORDER BY 2 + 3 DESC" >"$W/pgss"
    fi
else
    echo "NOT all runs were soaking at once within 300 s"
fi

deadline=$((SECONDS + ${SOAK%s} + 300))
while [ "$SECONDS" -lt "$deadline" ]; do
    n=$(psql_q -p "$STATE_PORT" -d pgshepherd_state -c "SELECT count(*) FROM runs WHERE phase = 'finished'")
    [ "$n" -ge "$RUNS" ] && break
    sleep 1
done
sleep 1
kill "$SAMPLER_PID" 2>/dev/null || true
wait "$SAMPLER_PID" 2>/dev/null || true
SAMPLER_PID=""
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

echo
echo "== outcomes"
psql_q -p "$STATE_PORT" -d pgshepherd_state -F ' ' -c "SELECT phase, coalesce(outcome, '-'), count(*) FROM runs GROUP BY 1, 2 ORDER BY 1, 2" | sed 's/^/  /'
psql_q -p "$STATE_PORT" -d pgshepherd_state -F ' | ' -c "SELECT id, target, outcome, left(reason, 200) FROM runs
    WHERE outcome IS DISTINCT FROM 'succeeded' ORDER BY seq LIMIT 5" | sed 's/^/  not succeeded: /'
psql_q -p "$STATE_PORT" -d pgshepherd_state -F ' ' -c "
    SELECT event->>'check', count(*), count(*) FILTER (WHERE NOT (event->>'valid')::bool),
           round(percentile_cont(0.5) WITHIN GROUP (ORDER BY (event->>'sample_ms')::float8)::numeric, 2)
      FROM events WHERE name = 'check_sample' AND event->>'step' = 'soak' GROUP BY 1 ORDER BY 1" \
    | awk '{ printf "  soak samples of %s: %d (%d not valid), median sample_ms %s\n", $1, $2, $3, $4 }'

echo
echo "== CPU on the target cluster (window: every run soaking)"
# Labels: the last application_name seen for each pid.
awk -F'|' '{ app[$1] = $2 } END { for (p in app) print p "|" app[p] }' "$W/labels" 2>/dev/null >"$W/labels.last" || true
awk -v tck="$CLK_TCK" -v runs="$RUNS" -v load0="$LOAD_START" -v load1="$LOAD_END" -v ncpu="$(nproc)" '
    FILENAME == ARGV[1] { split($0, kv, "|"); label[kv[1]] = kv[2]; next }
    FILENAME == ARGV[2] {
        n++; T[n] = $1; tt[n] = $2; st[n] = $3; dd[n] = $4; mb[n] = $5; mt[n] = $6; soak[n] = $7
        next
    }
    {   # procs: t pid ticks class, grouped by t
        if (!($1 in sample_seen)) { sample_seen[$1] = 1; ns++; ST[ns] = $1 }
        rows++; rt[rows] = $1; rp[rows] = $2; rk[rows] = $3; rc[rows] = $4
    }
    END {
        a = 0; b = 0
        for (i = 1; i <= n; i++) if (soak[i] >= runs) { if (!a) a = i; b = i }
        what = "every run soaking"
        if (!a || b - a < 3) {
            a = 0; b = 0
            for (i = 1; i <= n; i++) if (soak[i] >= 0.9 * runs) { if (!a) a = i; b = i }
            what = "at least 90 % of the runs soaking: SOAK was too short for the submissions"
        }
        if (!a || b == a) { print "  no window with (nearly) every run soaking: no figures"; exit }
        ta = T[a]; tb = T[b]; dt = tb - ta
        # Per-run figures are per run-second of soak: the number of runs soaking,
        # integrated over the window (RUNS x its length when every run soaked).
        rs = 0
        for (i = a; i < b; i++) rs += (T[i + 1] - T[i]) * (soak[i] + soak[i + 1]) / 2
        nruns = rs / dt
        # Per backend, inside [ta, tb].
        for (r = 1; r <= rows; r++) {
            t = rt[r] + 0
            if (t < ta || t > tb) continue
            p = rp[r]
            if (!(p in first)) { first[p] = t; base[p] = (rt[r] == ta) ? rk[r] : 0; cls[p] = rc[r] }
            last[p] = rk[r]
            if (rc[r] == "postmaster" && rt[r] == ta) pm0 = rk[r]
            if (rc[r] == "postmaster" && rt[r] == tb) pm1 = rk[r]
        }
        for (p in first) {
            c = last[p] - base[p]
            if (cls[p] ~ /^target_/) {
                l = (p in label) ? label[p] : "(unlabelled: came and went between two pg_stat_activity reads)"
                cpu[l] += c; nb[l]++; total += c; nback++
                if (first[p] > ta) born++
                if (runs == 1) per_backend = per_backend sprintf("    pid %s %s: %.1f ms/s\n", p, l, 1000 * c / tck / dt)
            } else if (cls[p] ~ /^bg:/) {
                bg += c
            } else if (cls[p] != "postmaster") {
                other += c
            }
        }
        printf "  window (%s): %.0f s, %.1f runs soaking on average; load average at start %s, at end %s (the machine is shared with other builds); machine busy %.0f %% of %d cores\n", what, dt, nruns, load0, load1, 100 * (mb[b] - mb[a]) / (mt[b] - mt[a]), ncpu
        printf "  pgshepherd sessions on the targets: %d backends seen in the window, %d of them born inside it\n", nback, born + 0
        printf "  %-52s %8s %12s %14s %14s\n", "application_name", "backends", "CPU ms/s", "ms/s per run", "% core per run"
        for (l in cpu)
            printf "  %-52s %8d %12.2f %14.3f %14.3f\n", l, nb[l], 1000 * cpu[l] / tck / dt, 1000 * cpu[l] / tck / dt / nruns, 100 * cpu[l] / tck / dt / nruns
        printf "  %-52s %8d %12.2f %14.3f %14.3f\n", "all pgshepherd sessions", nback, 1000 * total / tck / dt, 1000 * total / tck / dt / nruns, 100 * total / tck / dt / nruns
        if (per_backend != "") printf "  per backend:\n%s", per_backend
        tree = tt[b] - tt[a]
        printf "  cross-check, the whole target cluster: %.2f ms/s = %.3f ms/s per run (%.3f %% of a core per run); of it background processes %.2f ms/s, the postmaster with the children it reaped (this script'\''s pg_stat_activity reads, each a new connection; pgshepherd sessions that ended) %.2f ms/s\n", \
            1000 * tree / tck / dt, 1000 * tree / tck / dt / nruns, 100 * tree / tck / dt / nruns, 1000 * bg / tck / dt, 1000 * (pm1 - pm0 + other) / tck / dt
        printf "  elsewhere (not on the target): daemon %.1f %% of one core, state cluster %.1f %%\n", 100 * (dd[b] - dd[a]) / tck / dt, 100 * (st[b] - st[a]) / tck / dt
        printf "RESULT %.3f %.3f %s %s %.3f\n", 100 * total / tck / dt / nruns, 100 * tree / tck / dt / nruns, ta, tb, nruns > "/dev/stderr"
    }
' "$W/labels.last" "$W/ticks" "$W/procs" 2>"$W/result"
read -r _ pct_sessions pct_tree w_ta w_tb w_runs <"$W/result" || true
# A saturated server (or machine) makes the soak sample less often than once an
# interval (unwatched time does not count as soaked): CPU per second is then less
# than a keeping-up soak costs. CPU per tick (one sample of every check) is what a
# soak that keeps up pays per INTERVAL.
pct_tick=""
if [ -n "${w_tb:-}" ]; then
    n_checks=$(grep -c -E '^    - name: ' <<<"$checks_yaml")
    samples=$(psql_q -p "$STATE_PORT" -d pgshepherd_state -c "
        SELECT count(*) FROM events WHERE name = 'check_sample' AND event->>'step' = 'soak'
           AND ts BETWEEN to_timestamp($w_ta) AND to_timestamp($w_tb)")
    read -r tick_rate pct_tick < <(awk -v n="$samples" -v c="$n_checks" -v a="$w_ta" -v b="$w_tb" -v r="$w_runs" \
        -v pct="$pct_sessions" -v ims="$INTERVAL_MS" '
        BEGIN { rate = n / c / (b - a) / r; printf "%.3f %.3f\n", rate, pct / (rate * ims / 1000) }')
    echo "  ticks taken in the window: $tick_rate per run and second (1/INTERVAL = $(awk -v ims="$INTERVAL_MS" 'BEGIN { printf "%.3f", 1000 / ims }') when every tick is on time)"
    echo "  per tick (one sample of every check): $pct_tick % of one core per run at a $INTERVAL interval"
fi

if [ "$PGSS" = 1 ] && [ -s "$W/pgss" ]; then
    echo
    echo "== server time by statement (pg_stat_statements over $(awk -v a="$t_pgss0" -v b="$t_pgss1" 'BEGIN { printf "%.0f", b - a }') s of every run soaking; wall-clock time in the server, not CPU)"
    printf '  %10s %12s %12s %12s %14s  %s\n' calls "calls/s/run" "exec ms/call" "plan ms/call" "ms/s per run" query
    awk -F'|' -v dt="$(awk -v a="$t_pgss0" -v b="$t_pgss1" 'BEGIN { print b - a }')" -v runs="$RUNS" '
        { calls = $1; ex = $2; pl = $3; q = substr($4, 1, 100)
          tot_ms += ex + pl
          printf "  %10d %12.2f %12.3f %12.3f %14.3f  %s\n", calls, calls / dt / runs, ex / calls, pl / calls, (ex + pl) / dt / runs, q }
        END { printf "  total: %.3f ms/s per run in statements\n", tot_ms / dt / runs }' "$W/pgss"
fi

echo
echo "== summary"
echo "  runs: $RUNS, soak $SOAK at $INTERVAL, the demo plan's checks"
echo "  pgshepherd's sessions on the target: $pct_sessions % of one core per run and second of soak (whole target cluster: $pct_tree %)"
echo "  per tick, i.e. at $INTERVAL when every tick is on time: $pct_tick % of one core per run" \
    "  (target < 1 %: $(awk -v x="$pct_tick" 'BEGIN { print (x != "" && x < 1) ? "met" : "MISSED" }'))"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
