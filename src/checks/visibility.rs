//! Checks that count other sessions need to see them.
//!
//! PostgreSQL shows a role only its own sessions in `pg_stat_activity` unless it
//! has the privileges of `pg_read_all_stats` (which `pg_monitor` includes, and a
//! superuser has). Every other row keeps its pid, database and application name,
//! but its state, wait event, transaction start, backend type and query read NULL
//! (the query `<insufficient privilege>`). A count of waiting sessions or the age
//! of the oldest transaction then reads 0 while another role's session waits on a
//! lock: a healthy-looking number made of missing data.
//!
//! So a run refuses, before anything changes, a check or gate that reads
//! `pg_stat_activity` when its role cannot see other roles' sessions ([`blind_checks`]),
//! and the built-ins also count the hidden rows in every sample, making it
//! inconclusive when there are any (a privilege revoked during the soak).

use tokio_postgres::Client;

use crate::plan::{BuiltinSignal, Check, CheckSource, Plan};

/// The privilege a check that counts other sessions needs; `pg_monitor` includes it.
pub const PRIVILEGE: &str = "pg_read_all_stats";

/// What the target's role may see of other sessions.
#[derive(Debug, Clone)]
pub struct SessionVisibility {
    pub role: String,
    /// Has the privileges of `pg_read_all_stats` (or is a superuser).
    pub sees_all: bool,
}

impl SessionVisibility {
    pub async fn read(client: &Client) -> Result<Self, tokio_postgres::Error> {
        let row = client
            .query_one(
                "SELECT current_user::text, pg_has_role(current_user, 'pg_read_all_stats', 'USAGE')",
                &[],
            )
            .await?;
        Ok(SessionVisibility {
            role: row.try_get(0)?,
            sees_all: row.try_get(1)?,
        })
    }
}

/// Why `check` needs to see every session on the database, or `None` when it
/// does not. SQL is matched by the relation and function names that hide other
/// roles' sessions; a query that reads them through a view of its own is not
/// recognised (the docs say so).
pub fn needs_all_sessions(check: &Check) -> Option<String> {
    match &check.source {
        CheckSource::Builtin(
            signal
            @ (BuiltinSignal::LockWaitingSessions | BuiltinSignal::LongestTransactionSeconds),
        ) => Some(format!("builtin {}", signal.as_str())),
        CheckSource::Builtin(_) | CheckSource::Http(_) => None,
        CheckSource::Sql { query } => {
            let q = query.to_ascii_lowercase();
            [
                "pg_stat_activity",
                "pg_stat_get_activity",
                "pg_stat_get_backend",
            ]
            .iter()
            .find(|name| q.contains(*name))
            .map(|name| format!("its SQL reads {name}"))
        }
    }
}

/// The plan's gate and soak checks that need to see every session, each as
/// "gate check `busy` (its SQL reads pg_stat_activity)".
pub fn blind_checks(plan: &Plan) -> Vec<String> {
    let gate = plan.gate.iter().map(|g| ("gate check", &g.check));
    let soak = plan.soak.checks.iter().map(|c| ("check", c));
    gate.chain(soak)
        .filter_map(|(kind, check)| {
            needs_all_sessions(check).map(|why| format!("{kind} `{}` ({why})", check.name))
        })
        .collect()
}

/// The refusal when `visibility` cannot serve `blind` checks; `None` when it can.
pub fn refusal(visibility: &SessionVisibility, blind: &[String]) -> Option<String> {
    if visibility.sees_all || blind.is_empty() {
        return None;
    }
    Some(format!(
        "role {role} cannot see other roles' sessions in pg_stat_activity, so {checks} would \
         count only its own sessions and read 0 while others wait; nothing was changed \
         (GRANT {PRIVILEGE} TO {role}, or pg_monitor; or remove the check)",
        role = visibility.role,
        checks = blind.join(", "),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sql_check(query: &str) -> Check {
        Check {
            name: "c".into(),
            source: CheckSource::Sql {
                query: query.into(),
            },
            thresholds: Default::default(),
            consecutive: 1,
            min_samples: 1,
            on_inconclusive: crate::plan::InconclusivePolicy::Ignore,
            max_inconclusive: 0,
            timeout: std::time::Duration::from_secs(1),
        }
    }

    #[test]
    fn sql_reading_other_sessions_is_recognised_in_any_case() {
        assert!(needs_all_sessions(&sql_check("SELECT count(*) FROM PG_STAT_ACTIVITY")).is_some());
        assert!(
            needs_all_sessions(&sql_check(
                "SELECT count(*) FROM pg_stat_get_activity(NULL)"
            ))
            .is_some()
        );
        assert!(needs_all_sessions(&sql_check("SELECT count(*) FROM orders")).is_none());
    }

    #[test]
    fn only_the_session_counting_builtins_need_it() {
        for signal in BuiltinSignal::ALL {
            let mut check = sql_check("SELECT 1");
            check.source = CheckSource::Builtin(signal);
            let needs = matches!(
                signal,
                BuiltinSignal::LockWaitingSessions | BuiltinSignal::LongestTransactionSeconds
            );
            assert_eq!(needs_all_sessions(&check).is_some(), needs, "{signal:?}");
        }
    }

    #[test]
    fn a_role_that_sees_everything_or_no_blind_check_is_not_refused() {
        let blind = vec!["check `locks` (builtin lock_waiting_sessions)".to_string()];
        let mut v = SessionVisibility {
            role: "watcher".into(),
            sees_all: true,
        };
        assert!(refusal(&v, &blind).is_none());
        v.sees_all = false;
        assert!(refusal(&v, &[]).is_none());
        let reason = refusal(&v, &blind).unwrap();
        assert!(
            reason.contains("GRANT pg_read_all_stats TO watcher"),
            "{reason}"
        );
        assert!(reason.contains("check `locks`"), "{reason}");
    }
}
