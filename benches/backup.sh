#!/usr/bin/env bash
# Backup overhead: bare `pg_dump -Fc` (default gzip) vs pgshepherd's backup
# including its full verification (take + verify). The work is done by
# examples/backup_bench.rs; see docs/performance.md (Backup) for figures.
#
# Usage: benches/backup.sh [--size-mb 600] [--rounds 2] [--variants] [--database-url URL]
# Starts its own throwaway cluster (as `postgres` when run as root) filled with
# about --size-mb MB of md5 hex text unless --database-url is given.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --example backup_bench
exec target/release/examples/backup_bench "$@"
