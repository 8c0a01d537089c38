//! Rows written since a backup: the cumulative per-table write counters of
//! `pg_stat_user_tables` (`n_tup_ins`, `n_tup_upd`, `n_tup_del`), recorded in a
//! manifest just before its pg_dump starts and read again inside the restore, once
//! its locks stop every writer. The difference is what a restore discards.
//!
//! Precision (PostgreSQL's cumulative statistics, not a row count):
//! - a backend publishes its counters when it goes idle, at most once a second
//!   (later under contention on the statistics' locks): writes committed in the
//!   last second or so before a reading can be missing from it;
//! - rows written by transactions that rolled back count as written;
//! - the counters are read just before pg_dump takes its snapshot: a row committed
//!   in between is in the archive and still counted (too many, never too few);
//! - the counters are never reset by pgshepherd, but `pg_stat_reset()` by someone
//!   else or a crash (which discards the statistics) makes a difference negative,
//!   shown as 0;
//! - a table the migration created counts all its writes; one it dropped counts
//!   nothing (its counters went with it).
//!
//! Everything here except [`read`] is pure.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

/// Write counters of one table, or the difference of two readings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableWrites {
    /// `schema.table`, quoted where SQL needs it.
    pub table: String,
    pub inserted: i64,
    pub updated: i64,
    pub deleted: i64,
}

impl TableWrites {
    pub fn total(&self) -> i64 {
        self.inserted + self.updated + self.deleted
    }
}

/// Rows a restore discarded in one table: written after the backup began.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscardedWrites {
    #[serde(flatten)]
    pub writes: TableWrites,
    /// How many of these were written after the pre-restore snapshot began, so
    /// that neither the snapshot nor the restored database holds them.
    pub after_snapshot: i64,
}

impl std::fmt::Display for DiscardedWrites {
    /// `public.rental: 67 inserted, 3 updated (2 after the snapshot)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let w = &self.writes;
        let parts: Vec<String> = [
            (w.inserted, "inserted"),
            (w.updated, "updated"),
            (w.deleted, "deleted"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect();
        write!(f, "{}: {}", w.table, parts.join(", "))?;
        if self.after_snapshot > 0 {
            write!(f, " ({} after the snapshot)", self.after_snapshot)?;
        }
        Ok(())
    }
}

/// The rows a restore discarded, in words, for the run's output and its messages.
pub fn describe_discarded(discarded: &[DiscardedWrites]) -> String {
    if discarded.is_empty() {
        return "no rows written since the backup".to_string();
    }
    let total: i64 = discarded.iter().map(|d| d.writes.total()).sum();
    let after: i64 = discarded.iter().map(|d| d.after_snapshot).sum();
    let mut text = format!(
        "{total} row write(s) since the backup discarded ({})",
        discarded
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    );
    if after > 0 {
        text.push_str(&format!(
            "; {after} of them came after the snapshot began and are in neither the snapshot nor the database"
        ));
    }
    text
}

/// The query behind [`read`] (`view` `pg_stat_user_tables`), also run by the
/// restore inside its transaction, and behind [`read_own`]
/// (`pg_stat_xact_user_tables`). pgshepherd's own schema (the migration history)
/// is the run's bookkeeping, not anyone's data: left out.
pub(super) fn counters_sql(view: &str) -> String {
    format!(
        "SELECT format('%I.%I', schemaname, relname) AS table_name, n_tup_ins, n_tup_upd, n_tup_del \
         FROM pg_catalog.{view} WHERE schemaname <> 'pgshepherd'"
    )
}

/// The write counters of every user table now.
pub async fn read(client: &Client) -> Result<Vec<TableWrites>, tokio_postgres::Error> {
    query(client, "pg_stat_user_tables").await
}

/// The rows the current transaction of `client` has written so far, per table
/// with any: a migration's own writes, read just before its COMMIT, so that a
/// restore can tell them from users' writes.
pub async fn read_own(client: &Client) -> Result<Vec<TableWrites>, tokio_postgres::Error> {
    let mut own = query(client, "pg_stat_xact_user_tables").await?;
    own.retain(|t| t.total() > 0);
    Ok(own)
}

/// Add `more` to `total`, table by table.
pub fn add(total: &mut Vec<TableWrites>, more: &[TableWrites]) {
    for m in more {
        match total.iter_mut().find(|t| t.table == m.table) {
            Some(t) => {
                t.inserted += m.inserted;
                t.updated += m.updated;
                t.deleted += m.deleted;
            }
            None => total.push(m.clone()),
        }
    }
    total.sort_by(|a, b| a.table.cmp(&b.table));
}

async fn query(client: &Client, view: &str) -> Result<Vec<TableWrites>, tokio_postgres::Error> {
    let rows = client.query(&counters_sql(view), &[]).await?;
    let mut all: Vec<TableWrites> = rows
        .iter()
        .map(|r| TableWrites {
            table: r.get(0),
            inserted: r.get(1),
            updated: r.get(2),
            deleted: r.get(3),
        })
        .collect();
    all.sort_by(|a, b| a.table.cmp(&b.table));
    Ok(all)
}

/// Per table, what was written between the readings `before` and `now`; tables
/// with nothing written are left out. A table absent from `before` was created
/// since: all its writes count.
pub fn since(before: &[TableWrites], now: &[TableWrites]) -> Vec<TableWrites> {
    let before: BTreeMap<&str, &TableWrites> =
        before.iter().map(|t| (t.table.as_str(), t)).collect();
    let mut out: Vec<TableWrites> = now
        .iter()
        .map(|n| {
            let b = before.get(n.table.as_str());
            let minus = |now: i64, then: Option<i64>| (now - then.unwrap_or(0)).max(0);
            TableWrites {
                table: n.table.clone(),
                inserted: minus(n.inserted, b.map(|b| b.inserted)),
                updated: minus(n.updated, b.map(|b| b.updated)),
                deleted: minus(n.deleted, b.map(|b| b.deleted)),
            }
        })
        .filter(|t| t.total() > 0)
        .collect();
    out.sort_by(|a, b| a.table.cmp(&b.table));
    out
}

/// What a restore discarded: the writes since the backup, less `own` (the run's
/// migrations' writes, which the restore is meant to undo), each table with how
/// many of them came after the snapshot (`snapshot`: its counters; `None` means
/// no snapshot, so all of them). The migrations ran before the soak, so before
/// the snapshot: `own` never reduces `after_snapshot`.
pub fn discarded(
    backup: &[TableWrites],
    snapshot: Option<&[TableWrites]>,
    now: &[TableWrites],
    own: &[TableWrites],
) -> Vec<DiscardedWrites> {
    let after_snapshot: BTreeMap<String, i64> = match snapshot {
        Some(s) => since(s, now)
            .into_iter()
            .map(|t| (t.table.clone(), t.total()))
            .collect(),
        None => BTreeMap::new(),
    };
    since(backup, now)
        .into_iter()
        .map(|w| match own.iter().find(|o| o.table == w.table) {
            Some(o) => TableWrites {
                inserted: (w.inserted - o.inserted).max(0),
                updated: (w.updated - o.updated).max(0),
                deleted: (w.deleted - o.deleted).max(0),
                table: w.table,
            },
            None => w,
        })
        .filter(|w| w.total() > 0)
        .map(|writes| {
            let total = writes.total();
            let after = match snapshot {
                Some(_) => after_snapshot.get(&writes.table).copied().unwrap_or(0),
                None => total,
            };
            DiscardedWrites {
                after_snapshot: after.min(total),
                writes,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(table: &str, inserted: i64, updated: i64, deleted: i64) -> TableWrites {
        TableWrites {
            table: table.into(),
            inserted,
            updated,
            deleted,
        }
    }

    #[test]
    fn writes_since_a_reading_leave_out_untouched_tables_and_count_new_ones_whole() {
        let before = [
            t("public.a", 10, 2, 0),
            t("public.b", 5, 0, 0),
            t("public.gone", 9, 9, 9),
        ];
        let now = [
            t("public.a", 13, 2, 1),
            t("public.b", 5, 0, 0),
            t("public.new", 4, 0, 0),
        ];
        assert_eq!(
            since(&before, &now),
            vec![t("public.a", 3, 0, 1), t("public.new", 4, 0, 0)]
        );
    }

    #[test]
    fn the_migrations_own_writes_are_not_counted_as_discarded() {
        let backup = [t("public.a", 0, 0, 0), t("public.b", 0, 0, 0)];
        let snapshot = [t("public.a", 1000, 0, 0), t("public.b", 2, 0, 0)];
        let now = [t("public.a", 1003, 0, 0), t("public.b", 2, 0, 0)];
        let mut own = Vec::new();
        add(&mut own, &[t("public.a", 600, 0, 0)]);
        add(
            &mut own,
            &[t("public.a", 400, 0, 0), t("public.b", 2, 0, 0)],
        );
        assert_eq!(own, vec![t("public.a", 1000, 0, 0), t("public.b", 2, 0, 0)]);
        assert_eq!(
            discarded(&backup, Some(&snapshot), &now, &own),
            vec![DiscardedWrites {
                writes: t("public.a", 3, 0, 0),
                after_snapshot: 3
            }]
        );
    }

    #[test]
    fn a_reset_of_the_statistics_never_gives_a_negative_count() {
        assert_eq!(
            since(&[t("public.a", 10, 5, 5)], &[t("public.a", 2, 9, 0)]),
            vec![t("public.a", 0, 4, 0)]
        );
    }

    #[test]
    fn discarded_writes_say_how_many_the_snapshot_missed() {
        let backup = [t("public.a", 0, 0, 0), t("public.b", 0, 0, 0)];
        let snapshot = [t("public.a", 5, 0, 0), t("public.b", 1, 0, 0)];
        let now = [t("public.a", 7, 1, 0), t("public.b", 1, 0, 0)];
        let d = discarded(&backup, Some(&snapshot), &now, &[]);
        assert_eq!(
            d,
            vec![
                DiscardedWrites {
                    writes: t("public.a", 7, 1, 0),
                    after_snapshot: 3
                },
                DiscardedWrites {
                    writes: t("public.b", 1, 0, 0),
                    after_snapshot: 0
                },
            ]
        );
        assert!(
            discarded(&backup, None, &now, &[])
                .iter()
                .all(|d| d.after_snapshot == d.writes.total())
        );
        assert_eq!(
            describe_discarded(&d),
            "9 row write(s) since the backup discarded (public.a: 7 inserted, 1 updated (3 after the snapshot); \
             public.b: 1 inserted); 3 of them came after the snapshot began and are in neither the snapshot nor \
             the database"
        );
        assert_eq!(describe_discarded(&[]), "no rows written since the backup");
    }
}
