//! The audit trail: every mutating request (submit, approve, abort, ack), whatever
//! its outcome, and every refused request (401, 403), as one `audit` row and one
//! log line. Rows name the actor by token name; no token text ever reaches them.

use crate::daemon::shared::Shared;

/// Longest `detail` kept; a long list of plan errors is cut, not stored whole.
const MAX_DETAIL: usize = 2000;
/// The row is written before the response leaves, but a slow or lost state
/// database must not hold every answer (401s included) for the pool's timeouts.
const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Record one request. A failure to write the row is logged, never turned into a
/// failure of the request it describes (which has already been answered).
pub async fn record(
    shared: &Shared,
    actor: &str,
    action: &str,
    run_id: Option<&str>,
    status: u16,
    detail: &str,
) {
    let detail = truncate(detail, MAX_DETAIL);
    tracing::info!(actor, action, run_id, status, detail, "api audit");
    let write = async {
        let client = shared
            .pool
            .get()
            .await
            .map_err(|e| crate::pg::error_text(&e))?;
        client
            .execute(
                "INSERT INTO audit (actor, action, run_id, status, detail) VALUES ($1, $2, $3, $4, $5)",
                &[&actor, &action, &run_id, &i32::from(status), &detail],
            )
            .await
            .map_err(|e| crate::pg::server_message(&e))
    };
    let written = match tokio::time::timeout(WRITE_TIMEOUT, write).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "the state database did not answer within {}s",
            WRITE_TIMEOUT.as_secs()
        )),
    };
    if let Err(error) = written {
        tracing::error!(actor, action, run_id, status, %error, "could not write the audit row");
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::truncate;

    #[test]
    fn truncates_on_a_character_boundary() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("aé", 2), "a");
    }
}
