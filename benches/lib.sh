# Shared helpers for the benchmark scripts in this directory (sourced, not run).
#
# start_cluster: initdb + start a throwaway PostgreSQL on 127.0.0.1 and a free
# port, with the server's default settings except listen address, port and
# socket directory (fsync stays on). As root the server runs as `postgres`.
# The cluster and its temporary directory are removed on exit (trap).

set -euo pipefail

PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PGSHEPHERD=${PGSHEPHERD:-$REPO/target/release/pgshepherd}

BENCH_TMP=""
PGPORT=""
PGOWNER=""

as_pg() {
    if [ -n "$PGOWNER" ]; then
        runuser -u "$PGOWNER" -- "$@"
    else
        "$@"
    fi
}

free_port() {
    local p
    for _ in $(seq 1 200); do
        p=$((20000 + RANDOM % 20000))
        if ! ss -Htln "sport = :$p" | grep -q .; then
            echo "$p"
            return 0
        fi
    done
    echo "no free port found" >&2
    return 1
}

stop_cluster() {
    if [ -n "$BENCH_TMP" ] && [ -d "$BENCH_TMP" ]; then
        local d
        # The main cluster and any started by start_extra_cluster.
        for d in "$BENCH_TMP/data" "$BENCH_TMP"/*/data; do
            if [ -f "$d/postmaster.pid" ]; then
                as_pg "$PGBIN/pg_ctl" -D "$d" -m fast -w stop >/dev/null 2>&1 || true
            fi
        done
        if [ -z "${KEEP_BENCH_TMP:-}" ]; then
            rm -rf "$BENCH_TMP"
        else
            echo "kept $BENCH_TMP" >&2
        fi
    fi
}

# initdb + start a cluster in $1/data (socket in $1/sock) on a free port; sets
# STARTED_PORT. Needs BENCH_TMP and PGOWNER set (start_cluster does that).
init_and_start() {
    local dir=$1 try
    mkdir -p "$dir/data" "$dir/sock"
    [ -n "$PGOWNER" ] && chown "$PGOWNER" "$dir/data" "$dir/sock"
    as_pg "$PGBIN/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 \
        >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
    for try in 1 2 3 4 5; do
        STARTED_PORT=$(free_port)
        if as_pg "$PGBIN/pg_ctl" -D "$dir/data" -l "$dir/data/server.log" -w -t 60 \
            -o "-p $STARTED_PORT -c listen_addresses=127.0.0.1 -k $dir/sock" start >/dev/null; then
            return 0
        fi
        [ "$try" = 5 ] && { cat "$dir/data/server.log" >&2; exit 1; }
    done
}

start_cluster() {
    [ -x "$PGBIN/initdb" ] || { echo "no PostgreSQL server binaries in $PGBIN (set PGBIN)" >&2; exit 1; }
    BENCH_TMP=$(mktemp -d /tmp/pgshepherd-bench.XXXXXX)
    trap stop_cluster EXIT
    trap 'exit 130' INT TERM
    chmod 755 "$BENCH_TMP"
    if [ "$(id -u)" = 0 ]; then
        PGOWNER=postgres
    fi
    init_and_start "$BENCH_TMP"
    PGPORT=$STARTED_PORT
    export PGHOST=127.0.0.1 PGPORT PGUSER=postgres PGDATABASE=postgres
    unset PGPASSWORD PGSERVICE PGOPTIONS || true
}

# After start_cluster: a second throwaway cluster in $BENCH_TMP/$1 (data directory
# $BENCH_TMP/$1/data), stopped and removed with the first; sets EXTRA_PORT. For
# benchmarks that must keep two servers' CPU apart (e.g. the state database and
# the targets). psql_q talks to the first cluster unless given -p "$EXTRA_PORT".
start_extra_cluster() {
    init_and_start "$BENCH_TMP/$1"
    EXTRA_PORT=$STARTED_PORT
}

# URL of database $1 on the throwaway cluster.
db_url() {
    echo "postgres://postgres@127.0.0.1:$PGPORT/$1"
}

psql_q() {
    "$PGBIN/psql" -X -q -At -v ON_ERROR_STOP=1 "$@"
}

now_s() {
    date +%s.%N
}

# Print "min median p90 max" (ms, from one number per line on stdin).
# Median: mean of the two middle values for an even count. p90: nearest rank.
summary_ms() {
    sort -g | awk '{ v[NR] = $1 } END {
        n = NR; if (n == 0) { print "n=0"; exit }
        med = (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
        r = int(0.9 * n + 0.999999); if (r < 1) r = 1; if (r > n) r = n
        printf "n=%d min=%.0f median=%.0f p90=%.0f max=%.0f\n", n, v[1], med, v[r], v[n]
    }'
}

median() {
    sort -g | awk '{ v[NR] = $1 } END { n = NR; if (n == 0) { print "nan"; exit }
        printf "%.1f\n", (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2 }'
}

describe_machine() {
    echo "machine: nproc=$(nproc), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), load average $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "postgres: $("$PGBIN/postgres" --version), fsync=$(psql_q -c 'SHOW fsync'), synchronous_commit=$(psql_q -c 'SHOW synchronous_commit')"
    echo "pgshepherd: $PGSHEPHERD (built $(date -u -r "$PGSHEPHERD" +%FT%TZ), sha256 $(sha256sum "$PGSHEPHERD" | cut -c1-12); tree: HEAD $(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo '?')$(cd "$REPO" && [ -n "$(git status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null)" ] && echo ' + uncommitted changes'))"
}

# --- a daemon on the throwaway cluster (benchmarks of `pgshepherd daemon`) ---
# These use the globals W (work directory), BIN (the pgshepherd binary) and
# DATA (the cluster's data directory), which the caller sets after start_cluster.

DAEMON_PID=""

# Create N target databases target_001..target_N (plus the state database).
create_bench_databases() {
    psql_q -c "CREATE DATABASE pgshepherd_state"
    for i in $(seq 1 "$1"); do
        printf 'CREATE DATABASE target_%03d;\n' "$i"
    done | psql_q >/dev/null
}

# Write $W/daemon.yaml for N targets; sets TOKEN (a fresh bearer token with
# submit and approve) and PORT. The state database is STATE_URL when set (e.g. on
# a cluster of its own), else pgshepherd_state on the throwaway cluster.
write_daemon_config() {
    TOKEN="bench-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    local token_sha
    token_sha=$(printf %s "$TOKEN" | sha256sum | cut -d' ' -f1)
    PORT=$(free_port)
    {
        echo "listen: 127.0.0.1:$PORT"
        echo "state_database: \"${STATE_URL:-$(db_url pgshepherd_state)}\""
        echo "backup_dir: $W/backups"
        echo "targets:"
        for i in $(seq 1 "$1"); do
            printf '  target_%03d:\n    dsn: "%s"\n' "$i" "$(db_url "$(printf 'target_%03d' "$i")")"
        done
        echo "tokens:"
        echo "  - {name: bench, sha256: $token_sha, roles: [submit, approve]}"
        echo "log: {format: json, level: warn}"
        echo "daemon: {name: bench, max_active_runs: 250, poll_interval: 1s, lease_timeout: 15s}"
    } >"$W/daemon.yaml"
}

# A one-migration set in $1: CREATE TABLE t_marker, with its down script.
write_marker_migrations() {
    mkdir -p "$1"
    echo 'CREATE TABLE t_marker (id int);' >"$1/V1__marker.sql"
    echo 'DROP TABLE t_marker;' >"$1/V1__marker.down.sql"
}

# Start the daemon on $W/daemon.yaml and wait until /healthz answers; sets
# DAEMON_PID and S (its base URL).
start_daemon() {
    "$BIN" daemon --config "$W/daemon.yaml" </dev/null >"$W/daemon.out" 2>"$W/daemon.log" &
    DAEMON_PID=$!
    S=http://127.0.0.1:$PORT
    for _ in $(seq 1 300); do
        curl -sf "$S/healthz" >/dev/null 2>&1 && return 0
        kill -0 "$DAEMON_PID" 2>/dev/null || { echo "the daemon exited:" >&2; cat "$W/daemon.log" >&2; exit 1; }
        sleep 0.1
    done
    echo "the daemon did not become healthy" >&2
    cat "$W/daemon.log" >&2
    exit 1
}

# SIGTERM the daemon (SIGKILL after 10 s), then stop the cluster.
stop_daemon_and_cluster() {
    if [ -n "$DAEMON_PID" ] && kill -0 "$DAEMON_PID" 2>/dev/null; then
        kill -TERM "$DAEMON_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$DAEMON_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$DAEMON_PID" 2>/dev/null || true
    fi
    stop_cluster
}

# POST the bundle of plan $1 with migration set $2 (a directory holding
# V1__marker.sql and its down script) to /v1/runs. Prints "HTTP_CODE SECONDS";
# the response body is in $W/submit.json.
post_marker_bundle() {
    jq -n --arg path "$(basename "$1")" --rawfile plan "$1" \
        --arg set "$(basename "$2")" \
        --rawfile up "$2/V1__marker.sql" --rawfile down "$2/V1__marker.down.sql" \
        '{plan: {path: $path, content: $plan},
          migrations: {name: $set, files: [{name: "V1__marker.sql", content: $up},
                                           {name: "V1__marker.down.sql", content: $down}]}}' \
        >"$W/bundle.json"
    curl -sS -o "$W/submit.json" -w '%{http_code} %{time_total}' -X POST \
        -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
        --data-binary @"$W/bundle.json" "$S/v1/runs"
}

# CPU time (clock ticks) of the daemon (utime + stime, all threads).
daemon_ticks() {
    awk '{ print $14 + $15 }' "/proc/$DAEMON_PID/stat"
}

# CPU time (clock ticks) of the server: the postmaster (with its reaped
# children) plus its live children.
pg_ticks() {
    local postmaster pids
    postmaster=$(head -n 1 "$DATA/postmaster.pid")
    pids=$(pgrep -P "$postmaster" | sed 's|.*|/proc/&/stat|')
    {
        awk '{ print $14 + $15 + $16 + $17 }' "/proc/$postmaster/stat"
        # shellcheck disable=SC2086 # one path per child; cat skips those that just exited
        cat $pids 2>/dev/null | awk '{ print $14 + $15 }' || true
    } | awk '{ s += $1 } END { print s + 0 }'
}

# Busy (user, nice, system, irq, softirq) and total jiffies (+ idle, iowait,
# steal) of all CPUs.
machine_ticks() {
    awk '/^cpu / { busy = $2 + $3 + $4 + $7 + $8; print busy, busy + $5 + $6 + $9 }' /proc/stat
}

# Like write_daemon_config, then append stdin to $W/daemon.yaml: more top-level
# sections (e.g. `channels:` and `notifications:`).
write_daemon_config_extra() {
    write_daemon_config "$1"
    cat >>"$W/daemon.yaml"
}

# One line of process figures for a sampler: "t rss_kb threads daemon_ticks
# pg_ticks machine_busy machine_total" (0 for what a process that just exited
# cannot tell).
process_sample() {
    local rss thr dt
    rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$DAEMON_PID/status" 2>/dev/null || echo 0)
    thr=$(awk '/^Threads:/ { print $2 }' "/proc/$DAEMON_PID/status" 2>/dev/null || echo 0)
    dt=$(daemon_ticks 2>/dev/null || echo 0)
    echo "$(now_s) $rss $thr $dt $(pg_ticks) $(machine_ticks)"
}
