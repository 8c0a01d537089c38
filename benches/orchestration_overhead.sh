#!/usr/bin/env bash
# Orchestration overhead: the same 100 small migrations (each creates a table and
# inserts 3 rows) applied to fresh databases of one throwaway server by
#   (a) pgshepherd run  (backup disabled, shortest soak: 100ms interval/duration,
#       baseline_samples 1, a trivial SQL check) -- whole wall time, and the
#       migrate step alone from its events (first migration_started to last
#       migration_applied);
#   (b) refinery CLI    (`refinery migrate`, each migration in its own transaction,
#       the same V{n}__{name}.sql files without the .down.sql ones);
#   (c) psql -X -q -1 -v ON_ERROR_STOP=1 -f all.sql   (the up files concatenated,
#       one transaction).
# The tools take turns within each repetition (order rotated), on a fresh
# database each time; wall time is measured around the command.
#
# Requires: jq, ss (iproute2), runuser (util-linux) when run as root, and
# `cargo install refinery_cli --locked` (measured with 0.10.0).
#
# Usage: benches/orchestration_overhead.sh            (REPS=7 N=100)
# Env:   REPS, N, PGBIN, PGSHEPHERD (default target/release/pgshepherd),
#        REFINERY (default: refinery on PATH or ~/.cargo/bin/refinery),
#        BACKUP_DIR (pgshepherd's --backup-dir, where its journal goes),
#        SOAK (soak duration and interval, default 100ms),
#        TMPFS_JOURNAL=1 adds a fourth contender: pgshepherd with --backup-dir on
#        /dev/shm (its journal fsyncs become free), to measure what they cost,
#        DIAG=0 to skip the round-trip count (one extra logged run per tool).

source "$(dirname "$0")/lib.sh"

REPS=${REPS:-7}
N=${N:-100}
DIAG=${DIAG:-1}
SOAK=${SOAK:-100ms}     # soak duration = interval; the baseline also waits one interval
TMPFS_JOURNAL=${TMPFS_JOURNAL:-0}
REFINERY=${REFINERY:-$(command -v refinery || echo "$HOME/.cargo/bin/refinery")}

[ -x "$PGSHEPHERD" ] || { echo "build first: cargo build --release ($PGSHEPHERD missing)" >&2; exit 1; }
[ -x "$REFINERY" ] || { echo "install refinery first: cargo install refinery_cli --locked" >&2; exit 1; }
start_cluster
W=$BENCH_TMP/work
BACKUP_DIR=${BACKUP_DIR:-$W/backups}
mkdir -p "$W/bench_set" "$W/refinery" "$BACKUP_DIR"
if [ "$TMPFS_JOURNAL" = 1 ]; then
    SHM_DIR=$(mktemp -d /dev/shm/pgshepherd-bench.XXXXXX)
    trap 'rm -rf "$SHM_DIR"; stop_cluster' EXIT
fi

for n in $(seq 1 "$N"); do
    cat >"$W/bench_set/V${n}__create_t${n}.sql" <<SQL
CREATE TABLE t_$n (id int PRIMARY KEY, name text NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
INSERT INTO t_$n (id, name) VALUES (1, 'one'), (2, 'two'), (3, 'three');
SQL
    echo "DROP TABLE t_$n;" >"$W/bench_set/V${n}__create_t${n}.down.sql"
    cp "$W/bench_set/V${n}__create_t${n}.sql" "$W/refinery/"
    cat "$W/bench_set/V${n}__create_t${n}.sql" >>"$W/all.sql"
done

cat >"$W/plan.yaml" <<YAML
name: bench-orchestration-overhead
target: bench
migrations: bench_set
backup:
  enabled: false
soak:
  duration: $SOAK
  interval: $SOAK
  baseline_samples: 1
  checks:
    - name: alive
      sql: SELECT 1
      max: 1
      consecutive: 1
      min_samples: 1
rollback:
  strategy: down
  confirm: 0s
YAML
"$PGSHEPHERD" check "$W/plan.yaml" >/dev/null

epoch_ms() { date -d "$1" +%s%3N; }
median3() { sort -g | awk '{ v[NR] = $1 } END { n = NR; printf "%.2f", (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2 }'; }

tables_in() { psql_q -d "$1" -c "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename LIKE 't\_%'"; }

run_pgshepherd() { # db [backup_dir] -> "wall_ms migrate_ms pre_ms gap_ms tail_ms apply_ms"
    # migrate = first migration_started .. last migration_applied (event ts);
    # pre = process start .. first migration_started (connect, lock, baseline);
    # gap = last migration_applied .. soak_started; tail = soak_started .. exit;
    # apply = sum of the migrations' own duration_ms (whole ms, truncated).
    local db=$1 bdir=${2:-$BACKUP_DIR} out=$W/pgs_$1.jsonl t0 t1 rc=0
    t0=$(now_s)
    "$PGSHEPHERD" run "$W/plan.yaml" --database-url "$(db_url "$db")" --now --json \
        --backup-dir "$bdir" >"$out" 2>"$W/pgs_$db.err" || rc=$?
    t1=$(now_s)
    [ "$rc" = 0 ] || { echo "pgshepherd exited $rc" >&2; tail -n 3 "$out" >&2; exit 1; }
    local first last soak apply
    apply=$(jq -r 'select(.event == "migration_applied") | .duration_ms' "$out" | awk '{ s += $1 } END { print s }')
    first=$(epoch_ms "$(jq -r 'select(.event == "migration_started") | .ts' "$out" | head -n 1)")
    last=$(epoch_ms "$(jq -r 'select(.event == "migration_applied") | .ts' "$out" | tail -n 1)")
    soak=$(epoch_ms "$(jq -r 'select(.event == "soak_started") | .ts' "$out")")
    awk -v a="$t0" -v b="$t1" -v f="$first" -v l="$last" -v s="$soak" -v p="$apply" 'BEGIN {
        printf "%.1f %d %.0f %d %.0f %d\n", (b - a) * 1000, l - f, f - a * 1000, s - l, b * 1000 - s, p }'
}

run_refinery() { # db -> wall_ms
    local db=$1 t0 t1
    t0=$(now_s)
    DB_URL=$(db_url "$db") "$REFINERY" migrate -e DB_URL -p "$W/refinery" >"$W/ref_$db.log" 2>&1 \
        || { echo "refinery failed" >&2; cat "$W/ref_$db.log" >&2; exit 1; }
    t1=$(now_s)
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f\n", (b - a) * 1000 }'
}

run_psql() { # db -> wall_ms
    local db=$1 t0 t1
    t0=$(now_s)
    "$PGBIN/psql" -X -q -1 -v ON_ERROR_STOP=1 -d "$db" -f "$W/all.sql" >/dev/null
    t1=$(now_s)
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f\n", (b - a) * 1000 }'
}

describe_machine
echo "refinery: $("$REFINERY" --version 2>&1 | head -n 1)"
echo "journal (--backup-dir): $BACKUP_DIR on $(df --output=fstype "$BACKUP_DIR" | tail -n 1)"
echo "pgshepherd plan: backup disabled, soak duration = interval = $SOAK, baseline_samples 1, check SELECT 1"
echo "$N migrations, $REPS repetitions, fresh database per tool and repetition"

# One unmeasured warm-up round (page cache, binaries).
for tool in pgshepherd refinery psql; do
    psql_q -c "CREATE DATABASE warm_$tool"
    case $tool in
        pgshepherd) run_pgshepherd "warm_$tool" >/dev/null ;;
        refinery) run_refinery "warm_$tool" >/dev/null ;;
        psql) run_psql "warm_$tool" >/dev/null ;;
    esac
    psql_q -c "DROP DATABASE warm_$tool"
done

printf '%-4s %14s %16s %12s %10s   %-24s %8s %s\n' rep pgshepherd_ms pgs_migrate_ms refinery_ms psql_ms "pgs pre/gap/tail ms" apply_ms load1
: >"$W/pgs"; : >"$W/pgsm"; : >"$W/ref"; : >"$W/psql"; : >"$W/pre"; : >"$W/gap"; : >"$W/tail"; : >"$W/apply"
: >"$W/tmp"; : >"$W/tmpm"
tools=(pgshepherd refinery psql)
[ "$TMPFS_JOURNAL" = 1 ] && tools+=(pgstmpfs)
for i in $(seq 1 "$REPS"); do
    declare -A r=()
    for k in $(seq 0 $((${#tools[@]} - 1))); do
        tool=${tools[$(((i + k) % ${#tools[@]}))]}
        db=${tool}_$i
        psql_q -c "CREATE DATABASE $db"
        case $tool in
            pgshepherd) r[pgshepherd]=$(run_pgshepherd "$db") ;;
            refinery) r[refinery]=$(run_refinery "$db") ;;
            psql) r[psql]=$(run_psql "$db") ;;
            pgstmpfs) r[pgstmpfs]=$(run_pgshepherd "$db" "$SHM_DIR") ;;
        esac
        got=$(tables_in "$db")
        [ "$got" = "$N" ] || { echo "$tool left $got tables in $db, expected $N" >&2; exit 1; }
        psql_q -c "DROP DATABASE $db"
    done
    read -r pw pm pre gap tl ap <<<"${r[pgshepherd]}"
    printf '%-4s %14s %16s %12s %10s   %-24s %8s %s\n' "$i" "$pw" "$pm" "${r[refinery]}" "${r[psql]}" "$pre/$gap/$tl" "$ap" "$(cut -d' ' -f1 /proc/loadavg)"
    echo "$ap" >>"$W/apply"
    if [ "$TMPFS_JOURNAL" = 1 ]; then
        read -r tw tm _ <<<"${r[pgstmpfs]}"
        printf '     tmpfs journal: pgshepherd %s ms, migrate step %s ms\n' "$tw" "$tm"
        echo "$tw" >>"$W/tmp"; echo "$tm" >>"$W/tmpm"
    fi
    echo "$pw" >>"$W/pgs"; echo "$pm" >>"$W/pgsm"; echo "${r[refinery]}" >>"$W/ref"; echo "${r[psql]}" >>"$W/psql"
    echo "$pre" >>"$W/pre"; echo "$gap" >>"$W/gap"; echo "$tl" >>"$W/tail"
    unset r
done

mp=$(median <"$W/pgs"); mm=$(median <"$W/pgsm"); mr=$(median <"$W/ref"); mq=$(median <"$W/psql")
echo
echo "medians (ms): pgshepherd run $mp | pgshepherd migrate step $mm | refinery $mr | psql -1 $mq"
echo "pgshepherd migrate step: sum of the migrations' own duration_ms (median) $(median <"$W/apply")"
if [ "$TMPFS_JOURNAL" = 1 ]; then
    echo "pgshepherd with the journal on tmpfs (medians, ms): run $(median <"$W/tmp"), migrate step $(median <"$W/tmpm");" \
        "per-repetition ratio migrate step tmpfs/disk $(paste "$W/tmpm" "$W/pgsm" | awk '{ print $1 / $2 }' | median3)," \
        "migrate step tmpfs/refinery $(paste "$W/tmpm" "$W/ref" | awk '{ print $1 / $2 }' | median3)"
fi
echo "pgshepherd run outside the migrate step (medians, ms): start..first migration $(median <"$W/pre"), last migration..soak_started $(median <"$W/gap"), soak_started..exit $(median <"$W/tail")"
awk -v p="$mp" -v m="$mm" -v r="$mr" -v q="$mq" 'BEGIN {
    printf "pgshepherd run / refinery          = %.2f\n", p / r
    printf "pgshepherd migrate step / refinery = %.2f\n", m / r
    printf "pgshepherd run / psql              = %.2f\n", p / q
    printf "pgshepherd migrate step / psql     = %.2f\n", m / q
}'
# Ratios within each repetition (the tools ran back to back), then their median.
echo "median of per-repetition ratios: run/refinery $(paste "$W/pgs" "$W/ref" | awk '{ print $1 / $2 }' | median3)," \
    "migrate/refinery $(paste "$W/pgsm" "$W/ref" | awk '{ print $1 / $2 }' | median3)," \
    "run/psql $(paste "$W/pgs" "$W/psql" | awk '{ print $1 / $2 }' | median3)," \
    "migrate/psql $(paste "$W/pgsm" "$W/psql" | awk '{ print $1 / $2 }' | median3)"

if [ "$DIAG" = 1 ]; then
    # Client->server queries per migration, from the server log: one more run per
    # tool on a database with log_min_duration_statement = 0 (only that database
    # logs). Counted: the log lines from one migration's script to the next one's,
    # i.e. one steady-state cycle. A simple query is one round trip; an
    # extended-protocol query shows up as parse + bind + execute.
    echo
    echo "diagnosis: queries per migration (one logged, untimed run per tool)"
    for tool in pgshepherd refinery psql; do
        db=diag_$tool
        psql_q -c "CREATE DATABASE $db"
        psql_q -c "ALTER DATABASE $db SET log_min_duration_statement = 0"
        before=$(wc -l <"$BENCH_TMP/data/server.log")
        case $tool in
            pgshepherd) run_pgshepherd "$db" >/dev/null ;;
            refinery) run_refinery "$db" >/dev/null ;;
            psql) run_psql "$db" >/dev/null ;;
        esac
        # Join continuation lines (multi-line statements) onto their entry.
        tail -n +"$((before + 1))" "$BENCH_TMP/data/server.log" \
            | awk '/^\t/ { sub(/^\t/, " "); cur = cur $0; next } { if (cur != "") print cur; cur = $0 } END { if (cur != "") print cur }' \
            | grep 'LOG:  duration:' | sed -E 's/^.*duration: [0-9.]+ ms +//' >"$W/diag_$tool.log"
        total=$(wc -l <"$W/diag_$tool.log")
        echo "  $tool: $total queries logged in the whole run; one migration's cycle:"
        awk '/CREATE TABLE t_1 / { a = NR } /CREATE TABLE t_2 / { b = NR; exit }
             { l[NR] = $0 } END { for (i = a; i < b; i++) print "      " substr(l[i], 1, 100) }' "$W/diag_$tool.log"
        psql_q -c "DROP DATABASE $db"
    done
fi
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
