#!/usr/bin/env bash
# Notification delivery under load (issue: "notification latency from the state
# change to the receiver's 2xx (p50/p99) with a healthy receiver, and throughput
# of the outbox (notifications/s) with 100 concurrent runs").
#
# A throwaway cluster (max_connections=MAX_CONNECTIONS) holds a state database
# and 2*RUNS target databases; one `pgshepherd daemon` (log level warn, daemon:
# {max_active_runs: 250, poll_interval: 1s, lease_timeout: 15s}) has one
# `generic` channel, `sink`, signed with a whsec_ secret (HMAC-SHA256 per
# delivery is part of the cost), `concurrency: CONCURRENCY`,
# `progress_every: PROGRESS`, and `notifications: {poll_interval: 500ms,
# min_backoff: 200ms, max_backoff: 1s}`. The receiver is examples/webhook_sink.rs,
# a second process on the same machine: it answers 200 with an empty body
# (keep-alive) and records, per POST, its arrival time (wall clock, ns; taken
# once the request's body has been read, just before the answer is written) and
# the `webhook-id`. Every plan: a trivial transactional migration (CREATE TABLE +
# a down script), backup disabled, baseline_samples 1, one SQL check (`SELECT 1`,
# max 2) at INTERVAL, `notify: {channels: [sink]}`. With PROGRESS = INTERVAL =
# 1s a soaking run produces about one `soak_progress` notification a second,
# besides submitted, migration_applied, soak_started and succeeded.
#
# Phase 1, latency (healthy receiver): RUNS runs on target_001..RUNS, soaking
# for SOAK; wait until every run has finished and no notification is pending.
# Latency of a notification = its first arrival at the sink - its
# `notifications.created_at`. created_at is `now()` of the transaction that
# wrote the state change (and the notification), i.e. that transaction's
# *start*: the figure includes the rest of that transaction (its lock on the
# run's row, the commit), the wake-up of the channel worker, the claim, the
# signing, the HTTP exchange up to the sink's handler. It does not include
# recording the outcome (the delivered_at update). Reported per notification
# kind and for the progress notifications created during the steady window
# (every run soaking at once), with the offered rate (notifications created per
# second) over that window. Also from the event's own timestamp (the payload's
# `timestamp`, ms precision): event -> created_at (how long the run's writer
# held the event before its transaction began) and event -> sink.
#
# Phase 2, throughput (a backlog draining): the sink is stopped (SIGTERM), so
# every delivery fails ("connection refused") and is retried with backoff; RUNS
# more runs on target_RUNS+1..2*RUNS soak for SOAK2. Once they have all finished,
# the pending rows are counted and the sink is started again on the same port.
# Drain rate = rows delivered after the restart / (last delivered_at - first
# delivered_at after the restart): measured from the first delivery, because
# rows first wait out their backoff (<= max_backoff, 1 s). Per-second delivered
# counts (from delivered_at) show whether that rate is steady. Note the outbox's
# ordering rule: one run's notifications to a channel go one at a time, so at
# most min(CONCURRENCY, runs with pending rows) deliveries are in flight, and a
# run's next row is claimed only once its predecessor's outcome is recorded.
#
# Both phases: per-run order at the sink (first arrivals sorted by time must
# follow the outbox ids of each run), duplicates (the same webhook-id twice),
# delivered rows the sink never saw, and rows failed or dropped. While it runs,
# about once a second: the daemon's VmRSS, threads and CPU time, the CPU time of
# the PostgreSQL server (postmaster + backends) and of the sink, the machine's
# busy time, runs soaking/finished and rows pending/delivered.
#
# Usage: cargo build --release && cargo build --release --example webhook_sink
#        benches/notify_load.sh   (RUNS=100 SOAK=60s SOAK2=20s PROGRESS=1s CONCURRENCY=8)
# Env:   RUNS, SOAK, SOAK2, INTERVAL (1s), PROGRESS, CONCURRENCY (1..64),
#        MAX_CONNECTIONS (500), SHARED_BUFFERS (128MB), DRAIN_TIMEOUT (600, s),
#        PGBIN, PGSHEPHERD, WEBHOOK_SINK (default
#        target/release/examples/webhook_sink), KEEP_BENCH_TMP (keep the work
#        directory: daemon log, samples, the sink's arrival files).
# Exits non-zero only when the setup fails, never because of the figures.
# Everything (daemon, server, sink, this script's psql/curl) shares the cores.
# Requires: jq, curl, ss (iproute2), runuser (util-linux) when run as root.

source "$(dirname "$0")/lib.sh"

RUNS=${RUNS:-100}
SOAK=${SOAK:-60s}
SOAK2=${SOAK2:-20s}
INTERVAL=${INTERVAL:-1s}
PROGRESS=${PROGRESS:-1s}
CONCURRENCY=${CONCURRENCY:-8}
MAX_CONNECTIONS=${MAX_CONNECTIONS:-500}
SHARED_BUFFERS=${SHARED_BUFFERS:-128MB}
DRAIN_TIMEOUT=${DRAIN_TIMEOUT:-600}
WEBHOOK_SINK=${WEBHOOK_SINK:-$REPO/target/release/examples/webhook_sink}

to_ms() { # 1s, 500ms, 2m -> milliseconds
    case "$1" in
        *ms) echo "${1%ms}" ;;
        *s) echo $((${1%s} * 1000)) ;;
        *m) echo $((${1%m} * 60000)) ;;
        *) echo "unsupported duration $1 (use ms, s or m)" >&2; exit 1 ;;
    esac
}
SOAK_MS=$(to_ms "$SOAK")
SOAK2_MS=$(to_ms "$SOAK2")
to_ms "$INTERVAL" >/dev/null
to_ms "$PROGRESS" >/dev/null
[ "$RUNS" -ge 1 ] || { echo "RUNS must be >= 1" >&2; exit 1; }
[ "$((2 * RUNS))" -le 999 ] || { echo "RUNS must be <= 499 (target names have 3 digits)" >&2; exit 1; }
[ "$CONCURRENCY" -ge 1 ] && [ "$CONCURRENCY" -le 64 ] || { echo "CONCURRENCY must be 1..64" >&2; exit 1; }
for tool in jq curl sha256sum base64; do
    command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }
done
[ -x "$PGSHEPHERD" ] || { echo "build first: cargo build --release ($PGSHEPHERD missing)" >&2; exit 1; }
[ -x "$WEBHOOK_SINK" ] || { echo "build first: cargo build --release --example webhook_sink ($WEBHOOK_SINK missing)" >&2; exit 1; }

SAMPLER_PID=""
SINK_PID=""
cleanup() {
    if [ -n "$SAMPLER_PID" ]; then
        kill "$SAMPLER_PID" 2>/dev/null || true
        wait "$SAMPLER_PID" 2>/dev/null || true
    fi
    if [ -n "$SINK_PID" ]; then
        kill -TERM "$SINK_PID" 2>/dev/null || true
        wait "$SINK_PID" 2>/dev/null || true
    fi
    stop_daemon_and_cluster
}

start_cluster
trap cleanup EXIT
W=$BENCH_TMP/work
DATA=$BENCH_TMP/data
mkdir -p "$W/backups"
write_marker_migrations "$W/migrations/notify"
# Private copies: a concurrent rebuild cannot swap a binary mid-measurement.
cp "$PGSHEPHERD" "$W/pgshepherd"
cp "$WEBHOOK_SINK" "$W/webhook_sink"
BIN=$W/pgshepherd

psql_q -c "ALTER SYSTEM SET max_connections = $MAX_CONNECTIONS" \
    -c "ALTER SYSTEM SET shared_buffers = '$SHARED_BUFFERS'"
as_pg "$PGBIN/pg_ctl" -D "$DATA" -l "$DATA/server.log" -w -t 60 -m fast restart >/dev/null \
    || { tail -n 20 "$DATA/server.log" >&2; exit 1; }

echo "creating the state database and $((2 * RUNS)) target databases ..." >&2
create_bench_databases "$((2 * RUNS))"
# Do not let the benchmark inherit WAL-triggered checkpoints from its own set-up.
psql_q -c "CHECKPOINT"

# --- the sink ---
SINK_PORT=""
# Start the sink on SINK_PORT, appending to $1; wait until it answers.
start_sink() {
    "$W/webhook_sink" --listen "127.0.0.1:$SINK_PORT" --out "$1" 2>>"$W/sink.log" &
    SINK_PID=$!
    echo "$SINK_PID" >"$W/sink.pid"
    for _ in $(seq 1 200); do
        # A GET is answered 405 and not recorded.
        [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$SINK_PORT/" 2>/dev/null)" = 405 ] && return 0
        # (kill -0 would not notice: an exited child stays a zombie until waited for)
        if [ "$(awk '{ print $3 }' "/proc/$SINK_PID/stat" 2>/dev/null || echo Z)" = Z ]; then
            wait "$SINK_PID" 2>/dev/null || true
            SINK_PID=""
            return 1
        fi
        sleep 0.05
    done
    echo "the sink did not answer" >&2
    cat "$W/sink.log" >&2
    exit 1
}
stop_sink() {
    kill -TERM "$SINK_PID"
    wait "$SINK_PID" || { echo "the sink exited with an error:" >&2; cat "$W/sink.log" >&2; exit 1; }
    SINK_PID=""
    echo 0 >"$W/sink.pid"
}
for try in 1 2 3 4 5; do
    SINK_PORT=$(free_port)
    start_sink "$W/arrivals.1" && break
    [ "$try" = 5 ] && { echo "the sink could not start:" >&2; cat "$W/sink.log" >&2; exit 1; }
done

SECRET="whsec_$(head -c 32 /dev/urandom | base64 -w0)"
write_daemon_config_extra "$((2 * RUNS))" <<YAML
channels:
  sink:
    kind: generic
    url: "http://127.0.0.1:$SINK_PORT/hooks/pgshepherd"
    secret: "$SECRET"
    concurrency: $CONCURRENCY
    progress_every: $PROGRESS
notifications: {poll_interval: 500ms, min_backoff: 200ms, max_backoff: 1s}
YAML

plan_for() { # $1 = target name, $2 = soak duration
    cat <<YAML
name: notify-$1
target: $1
migrations: migrations/notify
backup:
  enabled: false
soak:
  duration: $2
  interval: $INTERVAL
  baseline_samples: 1
  checks:
    - name: one
      sql: SELECT 1
      max: 2
rollback:
  strategy: down
  confirm: 0s
notify:
  channels: [sink]
YAML
}
plan_for target_001 "$SOAK" >"$W/plan.yaml"
"$BIN" check "$W/plan.yaml" >/dev/null || { echo "the benchmark's plan does not check" >&2; "$BIN" check "$W/plan.yaml" >&2; exit 1; }

start_daemon

describe_machine
echo "server: max_connections=$(psql_q -c 'SHOW max_connections'), shared_buffers=$(psql_q -c 'SHOW shared_buffers')"
echo "runs: $RUNS per phase; phase 1 soak $SOAK, phase 2 soak $SOAK2, at $INTERVAL, one SQL check (SELECT 1), baseline_samples 1, backup disabled"
echo "channel sink: generic, signed (one whsec_ secret), concurrency $CONCURRENCY, progress_every $PROGRESS, timeout 10s (default)"
echo "notifications: poll_interval 500ms, min_backoff 200ms, max_backoff 1s"
echo "daemon: pid $DAEMON_PID, listen $PORT, max_active_runs 250, poll_interval 1s, lease_timeout 15s, log warn"
echo "sink: examples/webhook_sink, 127.0.0.1:$SINK_PORT, answers 200 (sha256 $(sha256sum "$W/webhook_sink" | cut -c1-12))"

CLK_TCK=$(getconf CLK_TCK)
sample_loop() {
    set +e +o pipefail # a process that exits mid-read must not stop the sampler
    while kill -0 "$DAEMON_PID" 2>/dev/null; do
        local procs spid st counts
        procs=$(process_sample)
        spid=$(cat "$W/sink.pid" 2>/dev/null || echo 0)
        st=$(awk '{ print $14 + $15 }' "/proc/$spid/stat" 2>/dev/null || echo -1)
        [ -n "$st" ] || st=-1
        counts=$(psql_q -d pgshepherd_state -F ' ' -c \
            "SELECT count(*) FILTER (WHERE state_name = 'soaking'), count(*) FILTER (WHERE phase = 'finished'),
                    (SELECT count(*) FROM notifications WHERE status = 'pending'),
                    (SELECT count(*) FROM notifications WHERE status = 'delivered') FROM runs" \
            2>/dev/null || echo "-1 -1 -1 -1")
        echo "$procs $spid $st $counts"
        sleep 1
    done
}
# Columns: t rss_kb threads daemon_ticks pg_ticks machine_busy machine_total
#          sink_pid sink_ticks soaking finished pending delivered
sample_loop >"$W/samples" &
SAMPLER_PID=$!
sleep 2 # a couple of idle samples first

# Submit runs on target_$1..target_$2 soaking for $3; prints the seconds taken.
submit_runs() {
    local i tgt out code t0
    : >"$W/submit_ms"
    t0=$(now_s)
    for i in $(seq "$1" "$2"); do
        tgt=$(printf 'target_%03d' "$i")
        plan_for "$tgt" "$3" >"$W/plan-$tgt.yaml"
        out=$(post_marker_bundle "$W/plan-$tgt.yaml" "$W/migrations/notify") || { echo "submit $i failed" >&2; exit 1; }
        code=${out%% *}
        if [ "$code" != 201 ]; then
            echo "submit $i: HTTP $code" >&2; cat "$W/submit.json" >&2; exit 1
        fi
        awk -v s="${out#* }" 'BEGIN { printf "%.1f\n", s * 1000 }' >>"$W/submit_ms"
    done
    awk -v a="$t0" -v b="$(now_s)" 'BEGIN { printf "%.1f", b - a }'
}
# Runs of target numbers $1..$2 that have finished.
finished_between() {
    psql_q -d pgshepherd_state -c "SELECT count(*) FROM runs WHERE phase = 'finished'
                                     AND substr(target, 8)::int BETWEEN $1 AND $2"
}
pending_rows() {
    psql_q -d pgshepherd_state -c "SELECT count(*) FROM notifications WHERE status = 'pending'"
}
rate() { # $1 events over $2 seconds, per second ("-" when $2 is not > 0)
    awk -v n="$1" -v s="$2" -v f="${3:-%.1f}" 'BEGIN { if (s > 0) printf f, n / s; else printf "-" }'
}
elapsed() { # seconds from $1 to $2 (now when absent)
    awk -v a="$1" -v b="${2:-$(now_s)}" 'BEGIN { printf "%.1f", b - a }'
}

# ---------------------------------------------------------------- phase 1
echo
echo "== phase 1: $RUNS runs, soak $SOAK, healthy receiver"
t1_submit=$(now_s)
took=$(submit_runs 1 "$RUNS" "$SOAK")
echo "  submitted $RUNS runs in $took s; POST /v1/runs (ms): $(summary_ms <"$W/submit_ms")"
deadline=$((SECONDS + SOAK_MS / 1000 + 300))
all_soaking=""
while [ "$SECONDS" -lt "$deadline" ]; do
    read -r n_soaking n_fin < <(psql_q -d pgshepherd_state -F ' ' -c \
        "SELECT count(*) FILTER (WHERE state_name = 'soaking'), count(*) FILTER (WHERE phase = 'finished') FROM runs")
    if [ -z "$all_soaking" ] && [ "$n_soaking" -ge "$RUNS" ]; then
        all_soaking=$(now_s)
        echo "  all $RUNS runs soaking $(elapsed "$t1_submit" "$all_soaking") s after the first submission"
    fi
    [ "$n_fin" -ge "$RUNS" ] && break
    sleep 0.5
done
t1_finished=$(now_s)
[ -n "$all_soaking" ] || echo "  NOT all runs were soaking at once"
echo "  every run finished $(elapsed "$t1_submit" "$t1_finished") s after the first submission ($(finished_between 1 "$RUNS") of $RUNS)"
deadline=$((SECONDS + 120))
while [ "$SECONDS" -lt "$deadline" ]; do
    [ "$(pending_rows)" = 0 ] && break
    sleep 0.2
done
t1_empty=$(now_s)
p1_pending=$(pending_rows)
echo "  outbox empty $(elapsed "$t1_finished" "$t1_empty") s later (pending rows now: $p1_pending)"

# ---------------------------------------------------------------- phase 2
echo
echo "== phase 2: receiver down, $RUNS runs soaking $SOAK2, then the receiver back"
log_lines_p1=$(wc -l <"$W/daemon.log")
sleep 0.5 # the sink flushes every 100 ms
stop_sink
t2_down=$(now_s)
echo "  sink stopped (SIGTERM)"
t2_submit=$(now_s)
took=$(submit_runs "$((RUNS + 1))" "$((2 * RUNS))" "$SOAK2")
echo "  submitted $RUNS runs in $took s; POST /v1/runs (ms): $(summary_ms <"$W/submit_ms")"
deadline=$((SECONDS + SOAK2_MS / 1000 + 300))
while [ "$SECONDS" -lt "$deadline" ]; do
    [ "$(finished_between "$((RUNS + 1))" "$((2 * RUNS))")" -ge "$RUNS" ] && break
    sleep 0.5
done
t2_finished=$(now_s)
echo "  every run finished $(elapsed "$t2_submit" "$t2_finished") s after the first submission ($(finished_between "$((RUNS + 1))" "$((2 * RUNS))") of $RUNS)"
read -r backlog backlog_tried backlog_attempts < <(psql_q -d pgshepherd_state -F ' ' -c \
    "SELECT count(*), count(*) FILTER (WHERE attempts > 0), coalesce(sum(attempts), 0)
       FROM notifications WHERE status = 'pending'")
echo "  backlog: $backlog pending rows ($backlog_tried of them tried at least once, $backlog_attempts failed attempts so far)"
t2_restart=$(now_s)
start_sink "$W/arrivals.2" || { echo "the sink could not start again on port $SINK_PORT:" >&2; cat "$W/sink.log" >&2; exit 1; }
echo "  sink started again on the same port, $(elapsed "$t2_down" "$t2_restart") s after it stopped"
deadline=$((SECONDS + DRAIN_TIMEOUT))
drained=""
while [ "$SECONDS" -lt "$deadline" ]; do
    if [ "$(pending_rows)" = 0 ]; then
        drained=$(now_s)
        break
    fi
    sleep 0.2
done
if [ -n "$drained" ]; then
    echo "  no row pending $(elapsed "$t2_restart" "$drained") s after the restart (polled every 0.2 s)"
else
    echo "  NOT drained within $DRAIN_TIMEOUT s: $(pending_rows) rows still pending"
fi
sleep 1.5 # a last sample or two
HWM_KB=$(awk '/^VmHWM:/ { print $2 }' "/proc/$DAEMON_PID/status")
stop_sink
kill "$SAMPLER_PID" 2>/dev/null || true
wait "$SAMPLER_PID" 2>/dev/null || true
SAMPLER_PID=""

# ---------------------------------------------------------------- analysis
# The outbox and the sink's arrivals, side by side in the `postgres` database.
psql_q -c "CREATE TABLE bench_n (id bigint, msg_id text, target int, kind text, status text,
                                 attempts int, created numeric, delivered numeric, event_ts numeric)" \
    -c "CREATE TABLE bench_a (ns numeric, msg_id text, bytes int, sink int)"
psql_q -d pgshepherd_state -c "COPY (
    SELECT n.id, n.msg_id, substr(r.target, 8)::int, n.kind, n.status, n.attempts,
           extract(epoch FROM n.created_at), extract(epoch FROM n.delivered_at),
           extract(epoch FROM (n.body::jsonb ->> 'timestamp')::timestamptz)
      FROM notifications n JOIN runs r ON r.id = n.run_id WHERE n.channel = 'sink') TO STDOUT" \
    | psql_q -c "COPY bench_n FROM STDIN"
for s in 1 2; do
    [ -s "$W/arrivals.$s" ] || continue
    awk -v s="$s" 'NF == 3 { print $0, s }' "$W/arrivals.$s" \
        | psql_q -c "COPY bench_a FROM STDIN WITH (DELIMITER ' ')"
done
psql_q -c "CREATE TABLE bench_first AS SELECT msg_id, min(ns) AS ns, count(*) AS k FROM bench_a GROUP BY msg_id" \
    -c "CREATE TABLE bench_l AS
          SELECT n.*, f.ns, f.k, (f.ns / 1e6 - n.created * 1000)::float8 AS ms,
                 (f.ns / 1e6 - n.event_ts * 1000)::float8 AS ev_ms,
                 ((n.created - n.event_ts) * 1000)::float8 AS wr_ms
            FROM bench_n n JOIN bench_first f USING (msg_id)" -c "ANALYZE"

# Windows from the samples: phase 1's steady stretch (every phase-1 run soaking).
read -r s1a s1b s1what < <(awk -v runs="$RUNS" -v t0="$t1_submit" -v t1="$t1_finished" '
    $1 >= t0 && $1 <= t1 { if ($10 >= runs) { if (!a) a = $1; b = $1 } if ($10 >= 0.9 * runs) { if (!c) c = $1; d = $1 } }
    END { if (a && b - a >= 3) print a, b, "every-run-soaking"; else if (c && d - c >= 3) print c, d, ">=90%-of-runs-soaking";
          else print t0, t1, "the-whole-phase" }' "$W/samples")
[ "$s1what" = "the-whole-phase" ] && s1a=$t1_submit && s1b=$t1_finished

echo
echo "== phase 1 results"
psql_q -d pgshepherd_state -F ' ' -c "SELECT coalesce(outcome, phase), count(*) FROM runs
                                       WHERE substr(target, 8)::int <= $RUNS GROUP BY 1 ORDER BY 1" \
    | sed 's/^/  runs: /'
psql_q -F ' ' -c "SELECT count(*), count(*) FILTER (WHERE status = 'delivered'), count(*) FILTER (WHERE status = 'failed'),
                         count(*) FILTER (WHERE status = 'dropped'), count(*) FILTER (WHERE status = 'pending'),
                         count(*) FILTER (WHERE attempts > 1)
                    FROM bench_n WHERE target <= $RUNS" >"$W/p1_counts"
read -r p1_n p1_del p1_failed p1_dropped p1_pend p1_retried <"$W/p1_counts"
echo "  notifications: $p1_n ($p1_del delivered, $p1_failed failed, $p1_dropped dropped, $p1_pending pending); attempts > 1: $p1_retried"
echo "  latency created_at -> sink (ms), by kind (n p50 p90 p99 max, attempts>1):"
psql_q -F ' ' -c "SELECT coalesce(kind, 'ALL'), count(*),
                         round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 1),
                         round(percentile_cont(0.9) WITHIN GROUP (ORDER BY ms)::numeric, 1),
                         round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 1),
                         round(max(ms)::numeric, 1), count(*) FILTER (WHERE attempts > 1)
                    FROM bench_l WHERE target <= $RUNS GROUP BY ROLLUP (kind)
                   ORDER BY kind IS NULL, count(*) DESC, kind" \
    | awk '{ printf "    %-18s n=%-6s p50 %-7s p90 %-7s p99 %-7s max %-7s attempts>1: %s\n", $1, $2, $3, $4, $5, $6, $7 }'
read -r st_n st50 st90 st99 stmax st_created st_delivered st_span < <(psql_q -F ' ' -c "
    SELECT count(*) FILTER (WHERE kind = 'soak_progress' AND created BETWEEN $s1a AND $s1b),
           coalesce(round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) FILTER (WHERE kind = 'soak_progress' AND created BETWEEN $s1a AND $s1b)::numeric, 1)::text, '-'),
           coalesce(round(percentile_cont(0.9) WITHIN GROUP (ORDER BY ms) FILTER (WHERE kind = 'soak_progress' AND created BETWEEN $s1a AND $s1b)::numeric, 1)::text, '-'),
           coalesce(round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms) FILTER (WHERE kind = 'soak_progress' AND created BETWEEN $s1a AND $s1b)::numeric, 1)::text, '-'),
           coalesce(round(max(ms) FILTER (WHERE kind = 'soak_progress' AND created BETWEEN $s1a AND $s1b)::numeric, 1)::text, '-'),
           (SELECT count(*) FROM bench_n WHERE created BETWEEN $s1a AND $s1b),
           (SELECT count(*) FROM bench_n WHERE delivered BETWEEN $s1a AND $s1b),
           round(($s1b - $s1a)::numeric, 1)
      FROM bench_l WHERE target <= $RUNS")
echo "  steady window ($s1what, ${st_span} s): offered $(rate "$st_created" "$st_span") notifications/s created, $(rate "$st_delivered" "$st_span")/s delivered"
echo "    soak_progress created in it: n=$st_n p50 $st50 p90 $st90 p99 $st99 max $stmax ms"
psql_q -F ' ' -c "SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY wr_ms)::numeric, 1),
                         round(percentile_cont(0.99) WITHIN GROUP (ORDER BY wr_ms)::numeric, 1),
                         round(max(wr_ms)::numeric, 1),
                         round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ev_ms)::numeric, 1),
                         round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ev_ms)::numeric, 1),
                         round(max(ev_ms)::numeric, 1)
                    FROM bench_l WHERE target <= $RUNS" \
    | awk '{ printf "  from the event timestamp (ms precision): event -> created_at p50 %s p99 %s max %s; event -> sink p50 %s p99 %s max %s ms\n", $1, $2, $3, $4, $5, $6 }'

# Checks on both phases: order per run, duplicates, rows never seen by the sink.
integrity() { # $1 = SQL condition on target
    psql_q -F ' ' -c "
        WITH o AS (SELECT target, id, lag(id) OVER (PARTITION BY target ORDER BY ns) AS prev
                     FROM bench_l WHERE $1)
        SELECT (SELECT count(*) FROM o WHERE prev > id),
               (SELECT count(*) FROM bench_l WHERE $1 AND k > 1),
               (SELECT coalesce(sum(k - 1), 0) FROM bench_l WHERE $1 AND k > 1),
               (SELECT count(*) FROM bench_n n WHERE $1 AND status = 'delivered'
                   AND NOT EXISTS (SELECT 1 FROM bench_first f WHERE f.msg_id = n.msg_id))" \
        | awk '{ printf "  per-run order at the sink: %s out of order; duplicates: %s webhook-ids arrived more than once (%s extra arrivals); delivered but never seen by the sink: %s\n", $1, $2, $3, $4 }'
}
integrity "target <= $RUNS"

echo
echo "== phase 2 results"
psql_q -d pgshepherd_state -F ' ' -c "SELECT coalesce(outcome, phase), count(*) FROM runs
                                       WHERE substr(target, 8)::int > $RUNS GROUP BY 1 ORDER BY 1" \
    | sed 's/^/  runs: /'
read -r d_n d_first d_last d_early d_other < <(psql_q -F ' ' -c "
    SELECT count(*) FILTER (WHERE delivered >= $t2_restart), coalesce(min(delivered) FILTER (WHERE delivered >= $t2_restart), 0),
           coalesce(max(delivered) FILTER (WHERE delivered >= $t2_restart), 0),
           count(*) FILTER (WHERE target > $RUNS AND delivered < $t2_restart),
           count(*) FILTER (WHERE target <= $RUNS AND delivered >= $t2_restart)
      FROM bench_n")
echo "  backlog when the sink came back: $backlog rows pending"
[ "$d_early" != 0 ] && echo "  UNEXPECTED: $d_early phase-2 rows marked delivered while the sink was down"
[ "$d_other" != 0 ] && echo "  note: $d_other phase-1 rows were delivered after the restart"
if [ "$d_n" -gt 0 ]; then
    span=$(awk -v a="$d_first" -v b="$d_last" 'BEGIN { printf "%.3f", b - a }')
    echo "  delivered after the restart: $d_n rows; first delivery $(awk -v a="$t2_restart" -v b="$d_first" 'BEGIN { printf "%.2f", b - a }') s after the restart, last $(awk -v a="$t2_restart" -v b="$d_last" 'BEGIN { printf "%.2f", b - a }') s after it"
    short=$(awk -v s="$span" 'BEGIN { if (s < 5) printf " (a drain under 5 s: too short a span to quote as a rate)" }')
    echo "  drain rate (first to last delivery, $span s): $(rate "$d_n" "$span" %.0f) notifications/s; from the restart: $(rate "$d_n" "$(elapsed "$t2_restart" "$d_last")" %.0f)/s$short"
    psql_q -A -F ' ' -c "SELECT floor(delivered - $d_first)::int, count(*) FROM bench_n
                          WHERE delivered >= $t2_restart GROUP BY 1 ORDER BY 1" >"$W/drain_per_s"
    echo "  delivered per second from the first delivery (the last second is partial):"
    awk '{ printf "%s%s", (NR > 1 ? " " : ""), $2 } END { print "" }' "$W/drain_per_s" | fold -s -w 100 | sed 's/^/    /'
    if [ "$(wc -l <"$W/drain_per_s")" -ge 3 ]; then
        # Every whole second: all but the last (partial) one.
        head -n -1 "$W/drain_per_s" | awk '{ print $2 }' | sort -g >"$W/drain_whole"
        echo "  steady drain rate (median of the $(wc -l <"$W/drain_whole") whole seconds): $(median <"$W/drain_whole") notifications/s (min $(head -n 1 "$W/drain_whole"), max $(tail -n 1 "$W/drain_whole"))"
    else
        echo "  steady drain rate: too short to tell (fewer than 3 seconds)"
    fi
fi
psql_q -F ' ' -c "SELECT round(avg(attempts)::numeric, 1), max(attempts),
                         count(*) FILTER (WHERE status = 'failed'), count(*) FILTER (WHERE status = 'dropped'),
                         count(*) FILTER (WHERE status = 'pending')
                    FROM bench_n WHERE target > $RUNS" \
    | awk '{ printf "  phase-2 rows: attempts mean %s, max %s; failed %s, dropped %s, still pending %s\n", $1, $2, $3, $4, $5 }'
integrity "target > $RUNS"

echo
echo "== resources"
# CPU (% of one core) of the daemon, the server, the sink, and the machine's busy
# share, between the first and last samples inside [$1, $2].
window_cpu() {
    awk -v a="$1" -v b="$2" -v tck="$CLK_TCK" -v ncpu="$(nproc)" '
        $1 >= a && $1 <= b { if (!i) { t0 = $1; d0 = $4; p0 = $5; mb0 = $6; mt0 = $7; sp0 = $8; s0 = $9 }
                            i++; t1 = $1; d1 = $4; p1 = $5; mb1 = $6; mt1 = $7; sp1 = $8; s1 = $9 }
        END { dt = t1 - t0
              if (i < 2 || dt <= 0) { print "too short for the 1 s samples"; exit }
              sink = (sp0 == sp1 && s0 >= 0 && s1 >= 0) ? sprintf("%.1f%%", 100 * (s1 - s0) / tck / dt) : "n/a (not running)"
              printf "over %.0f s: daemon %.1f%%, PostgreSQL server %.1f%%, sink %s of one core; machine busy %.1f%% of %d cores\n",
                     dt, 100 * (d1 - d0) / tck / dt, 100 * (p1 - p0) / tck / dt, sink, 100 * (mb1 - mb0) / (mt1 - mt0), ncpu }' "$W/samples"
}
echo "  phase 1 steady window: $(window_cpu "$s1a" "$s1b")"
echo "  phase 2 while the sink was down: $(window_cpu "$t2_submit" "$t2_finished")"
if [ "$d_n" -gt 0 ]; then
    echo "  phase 2 drain (first to last delivery): $(window_cpu "$d_first" "$d_last")"
fi
awk -v hwm="$HWM_KB" '
    NR == 1 { idle = $2 } { if ($2 > peak) peak = $2; if ($3 > thr) thr = $3; last = $2 }
    END { if (hwm > peak) peak = hwm
          printf "  daemon RSS: idle %.1f MB, peak %.1f MB (VmHWM), at the end %.1f MB; threads at most %d\n", idle / 1024, peak / 1024, last / 1024, thr }' "$W/samples"
psql_q -d pgshepherd_state -F ' ' -c "SELECT pg_size_pretty(pg_total_relation_size('notifications')), (SELECT count(*) FROM notifications)" \
    | awk '{ printf "  notifications table: %s %s, %d rows\n", $1, $2, $3 }'

echo
echo "== daemon log (warn and above)"
warns=$(grep -c '"level":"WARN"' "$W/daemon.log" || true)
errors=$(grep -c '"level":"ERROR"' "$W/daemon.log" || true)
echo "  $warns warnings, $errors errors, $(wc -l <"$W/daemon.log") lines; in phase 1 (up to the sink's stop): $(head -n "$log_lines_p1" "$W/daemon.log" | grep -c '"level":"\(WARN\|ERROR\)"' || true) warnings/errors"
jq -r 'select(.level == "WARN" or .level == "ERROR") | "\(.level) \(.fields.message // .message // "")"' "$W/daemon.log" 2>/dev/null \
    | sed -E 's/[0-9a-f]{12}/<id>/g' | sort | uniq -c | sort -rn | head -n 10 | sed 's/^/  /' || true
echo "  errors of the retried deliveries (count, error):"
jq -r 'select((.fields.message // .message) == "notification not delivered; will retry") | (.fields.error // .error // "?")' "$W/daemon.log" 2>/dev/null \
    | sort | uniq -c | sort -rn | head -n 5 | sed 's/^/    /' || true
grep -v '^{' "$W/daemon.log" | head -n 5 | sed 's/^/  (non-JSON) /' || true
echo "  server log: $(grep -c 'ERROR\|FATAL' "$DATA/server.log" || true) ERROR/FATAL lines"
grep -E 'ERROR|FATAL' "$DATA/server.log" | sed -E 's/^[0-9-]+ [0-9:.]+ [A-Z]+ \[[0-9]+\] //' | sort | uniq -c | sort -rn | head -n 5 | sed 's/^/  /' || true
echo "  sink: started $(grep -c 'listening on' "$W/sink.log" || true) times, stopped $(grep -c 'flushed, exiting' "$W/sink.log" || true) times; other lines: $(grep -vc 'listening on\|flushed, exiting' "$W/sink.log" || true)"
grep -v 'listening on\|flushed, exiting' "$W/sink.log" | head -n 5 | sed 's/^/    /' || true

echo
echo "== summary"
read -r all_n all50 all99 < <(psql_q -F ' ' -c "SELECT count(*), coalesce(round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 1)::text, '-'),
                                                        coalesce(round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 1)::text, '-')
                                                   FROM bench_l WHERE target <= $RUNS")
echo "  healthy receiver, $RUNS runs: latency created_at -> sink p50 $all50 ms, p99 $all99 ms (n=$all_n; soak_progress in the steady window: p50 $st50, p99 $st99 ms), offered $(rate "$st_created" "$st_span") notifications/s"
if [ "$d_n" -gt 0 ]; then
    echo "  backlog of $backlog rows from $RUNS runs: drained at $(rate "$d_n" "$span" %.0f) notifications/s (first to last delivery, concurrency $CONCURRENCY)$short"
else
    echo "  backlog of $backlog rows from $RUNS runs: nothing delivered after the restart"
fi
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
