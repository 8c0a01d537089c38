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
        if [ -f "$BENCH_TMP/data/postmaster.pid" ]; then
            as_pg "$PGBIN/pg_ctl" -D "$BENCH_TMP/data" -m fast -w stop >/dev/null 2>&1 || true
        fi
        if [ -z "${KEEP_BENCH_TMP:-}" ]; then
            rm -rf "$BENCH_TMP"
        else
            echo "kept $BENCH_TMP" >&2
        fi
    fi
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
    mkdir -p "$BENCH_TMP/data" "$BENCH_TMP/sock"
    [ -n "$PGOWNER" ] && chown "$PGOWNER" "$BENCH_TMP/data" "$BENCH_TMP/sock"
    as_pg "$PGBIN/initdb" -D "$BENCH_TMP/data" -U postgres --auth=trust -E UTF8 \
        >"$BENCH_TMP/initdb.log" 2>&1 || { cat "$BENCH_TMP/initdb.log" >&2; exit 1; }
    local try
    for try in 1 2 3 4 5; do
        PGPORT=$(free_port)
        if as_pg "$PGBIN/pg_ctl" -D "$BENCH_TMP/data" -l "$BENCH_TMP/data/server.log" -w -t 60 \
            -o "-p $PGPORT -c listen_addresses=127.0.0.1 -k $BENCH_TMP/sock" start >/dev/null; then
            break
        fi
        [ "$try" = 5 ] && { cat "$BENCH_TMP/data/server.log" >&2; exit 1; }
    done
    export PGHOST=127.0.0.1 PGPORT PGUSER=postgres PGDATABASE=postgres
    unset PGPASSWORD PGSERVICE PGOPTIONS || true
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
