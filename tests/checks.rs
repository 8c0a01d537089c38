//! Soak checks against a real PostgreSQL and a real HTTP server on 127.0.0.1:
//! what each source measures, that missing data is inconclusive with a reason
//! that says why, that a check can never write, and that the built-in signals see
//! real deadlocks, rollbacks, lock waits and open transactions.

mod common;

use std::time::{Duration, Instant};

use pgshepherd::checks::{CheckState, Observation, Sampler, Verdict};
use pgshepherd::pg::Dsn;
use pgshepherd::plan::model::{
    BuiltinSignal, Check, CheckSource, HttpProbe, InconclusivePolicy, Thresholds,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_postgres::Client;

fn check(source: CheckSource, timeout: Duration) -> Check {
    Check {
        name: "probe".to_string(),
        source,
        thresholds: Thresholds {
            max: Some(0.5),
            ..Default::default()
        },
        consecutive: 1,
        min_samples: 1,
        on_inconclusive: InconclusivePolicy::Breach,
        max_inconclusive: 0,
        timeout,
    }
}

fn sql(query: &str) -> Check {
    check(
        CheckSource::Sql {
            query: query.to_string(),
        },
        Duration::from_secs(5),
    )
}

fn builtin(signal: BuiltinSignal) -> Check {
    check(CheckSource::Builtin(signal), Duration::from_secs(5))
}

fn http(url: String, pointer: Option<&str>, timeout: Duration) -> Check {
    let probe = HttpProbe {
        url,
        expect_status: vec![200],
        json_pointer: pointer.map(str::to_string),
    };
    check(CheckSource::Http(probe), timeout)
}

async fn sample_once(check: &Check, dsn: &Dsn) -> Observation {
    Sampler::new(check, dsn).sample().await
}

#[track_caller]
fn assert_inconclusive(obs: &Observation, reason_contains: &str) {
    match obs {
        Observation::Inconclusive { reason } => {
            eprintln!("inconclusive: {reason}");
            assert!(
                reason.contains(reason_contains),
                "reason {reason:?} does not mention {reason_contains:?}"
            )
        }
        other => panic!("expected inconclusive ({reason_contains}), got {other:?}"),
    }
}

/// A session that is not pgshepherd's, as the application would open it.
async fn app_session(dsn: &Dsn, name: &str) -> Client {
    dsn.connect(name, &[]).await.expect("connect")
}

/// An application session (`app-holder`) in a transaction holding row 1 of `r`.
async fn hold_row_one(dsn: &Dsn) -> Client {
    let holder = app_session(dsn, "app-holder").await;
    holder
        .batch_execute("BEGIN; SELECT * FROM r WHERE id = 1 FOR UPDATE")
        .await
        .unwrap();
    holder
}

// ---------------------------------------------------------------- SQL

#[tokio::test]
async fn sql_values_of_any_numeric_type() {
    let db = common::fresh_db().await;
    for (query, expected) in [
        ("SELECT 42", 42.0),
        ("SELECT 9000000000::bigint", 9e9),
        ("SELECT 1.25::numeric(10,2)", 1.25),
        ("SELECT 0.5::real", 0.5),
        ("SELECT '7'", 7.0),
        ("SELECT count(*) FROM generate_series(1, 3);  \n", 3.0),
        ("SELECT 2 -- a trailing comment", 2.0),
    ] {
        assert_eq!(
            sample_once(&sql(query), &db.dsn).await,
            Observation::Value(expected),
            "{query}"
        );
    }
}

#[tokio::test]
async fn sql_missing_data_is_inconclusive_with_a_reason() {
    let db = common::fresh_db().await;
    for (query, reason) in [
        ("SELECT NULL::int", "query returned NULL"),
        ("SELECT 1 WHERE false", "query returned no row"),
        ("SELECT 'NaN'::float8", "query returned NaN"),
        ("SELECT 'Infinity'::numeric", "query returned infinity"),
        (
            "SELECT 'abc'",
            "invalid input syntax for type double precision",
        ),
        (
            "SELECT true",
            "cannot cast type boolean to double precision",
        ),
        ("SELECT generate_series(1, 3)", "more than one row"),
        ("SELECT 1, 2", "returns 2 columns"),
        ("SELEC 1", "syntax error"),
        ("SELECT count(*) FROM no_such_table", "does not exist"),
        ("SELECT $1::int", "parameter"),
    ] {
        assert_inconclusive(&sample_once(&sql(query), &db.dsn).await, reason);
    }
}

#[tokio::test]
async fn sql_statement_timeout_is_inconclusive_and_prompt() {
    let db = common::fresh_db().await;
    // A query that would run for an hour: a sample that comes back at all was
    // cut off by its timeout rather than waited out.
    let mut c = sql("SELECT 1 FROM pg_sleep(3600)");
    c.timeout = Duration::from_millis(200);
    let mut sampler = Sampler::new(&c, &db.dsn);
    // The first sample connects too.
    let obs = common::within("the first sample", sampler.sample()).await;
    assert_inconclusive(&obs, "statement_timeout 200ms reached");
    // The connection survives a statement timeout; the next sample is cut off too.
    let started = Instant::now();
    let obs = common::within("the second sample", sampler.sample()).await;
    let took = started.elapsed();
    assert_inconclusive(&obs, "statement_timeout 200ms reached");
    assert!(sampler.last_took().unwrap() <= took);

    // `SELECT pg_sleep(3600)` itself is refused before it runs: void is not a
    // number (were it run, the reason would be the timeout).
    let mut c = sql("SELECT pg_sleep(3600)");
    c.timeout = Duration::from_millis(200);
    let obs = common::within("the sample", sample_once(&c, &db.dsn)).await;
    assert_inconclusive(&obs, "cannot cast type void");
}

#[tokio::test]
async fn sql_checks_run_read_only_named_and_time_boxed() {
    let db = common::fresh_db().await;
    let mut c = sql("SELECT count(*) FROM pg_stat_activity \
         WHERE pid = pg_backend_pid() AND application_name = 'pgshepherd-check' \
           AND current_setting('transaction_read_only') = 'on' \
           AND current_setting('default_transaction_read_only') = 'on'");
    c.timeout = Duration::from_millis(1234);
    assert_eq!(sample_once(&c, &db.dsn).await, Observation::Value(1.0));
    let timeout = sql("SELECT setting::float8 FROM pg_settings WHERE name = 'statement_timeout'");
    let mut timeout = timeout;
    timeout.timeout = Duration::from_millis(1234);
    assert_eq!(
        sample_once(&timeout, &db.dsn).await,
        Observation::Value(1234.0)
    );
}

#[tokio::test]
async fn sql_checks_cannot_write() {
    let db = common::fresh_db().await;
    db.execute(
        "CREATE TABLE t (x int); INSERT INTO t VALUES (1); CREATE SEQUENCE s; \
         CREATE FUNCTION sneaky() RETURNS int LANGUAGE sql AS 'INSERT INTO t VALUES (9) RETURNING 1';",
    )
    .await;
    for (query, reason) in [
        ("INSERT INTO t VALUES (2) RETURNING 1", "syntax error"),
        (
            "WITH d AS (DELETE FROM t RETURNING 1) SELECT count(*) FROM d",
            "top level",
        ),
        ("SELECT 1; DELETE FROM t", "cannot insert multiple commands"),
        (
            "SELECT count(*) FROM t; DELETE FROM t;",
            "cannot insert multiple commands",
        ),
        (
            "SELECT 1) AS q(v); DELETE FROM t; SELECT (1",
            "syntax error",
        ),
        ("SELECT sneaky()", "read-only"),
        ("SELECT nextval('s')", "read-only"),
        (
            "SELECT count(*) FROM (SELECT set_config('transaction_read_only', 'off', true)) x",
            "read-write",
        ),
    ] {
        let mut sampler = Sampler::new(&sql(query), &db.dsn);
        for _ in 0..2 {
            assert_inconclusive(&sampler.sample().await, reason);
        }
    }
    assert_eq!(
        db.query_i64("SELECT count(*) FROM t").await,
        1,
        "nothing was written"
    );
    assert_eq!(db.query_i64("SELECT last_value FROM s").await, 1);
    assert_eq!(
        db.query_i64("SELECT count(*) FROM s WHERE is_called").await,
        0,
        "the sequence was never advanced"
    );
}

/// The case that started it all: a share computed from a jsonb field where a
/// missing reason means "unknown". NULLs must count, and an empty table is not 0%.
#[tokio::test]
async fn seed_case_unknown_cancel_reason_share() {
    let db = common::fresh_db().await;
    db.execute("CREATE TABLE cancellations (id serial PRIMARY KEY, results jsonb NOT NULL)")
        .await;
    let query = "SELECT count(*) FILTER (WHERE coalesce(results->>'cancel_reason', 'unknown') = 'unknown')::float8 \
                        / nullif(count(*), 0) \
                 FROM cancellations";
    let mut c = sql(query);
    c.name = "unknown_cancel_reason_share".to_string();
    c.consecutive = 2;
    let mut sampler = Sampler::new(&c, &db.dsn);
    let mut state = CheckState::new(&c, None);

    let empty = sampler.sample().await;
    assert_inconclusive(&empty, "query returned NULL");
    assert!(
        !state.observe(&empty).valid,
        "an empty table is not a 0% share"
    );

    db.execute(
        r#"INSERT INTO cancellations (results) VALUES
           ('{"cancel_reason": "unknown"}'), ('{}'), ('{"cancel_reason": null}'),
           ('{"cancel_reason": "customer"}'), ('{"cancel_reason": "fraud"}')"#,
    )
    .await;
    let obs = sampler.sample().await;
    let Observation::Value(share) = obs else {
        panic!("{obs:?}")
    };
    assert!(
        (share - 0.6).abs() < 1e-9,
        "3 of 5 unknown (two of them NULL), got {share}"
    );
    let first = state.observe(&obs);
    assert!(first.breaching && first.verdict.is_none());
    let second = state.observe(&sampler.sample().await);
    let verdict = second.verdict.expect("two breaches in a row");
    assert_eq!(
        verdict.message(),
        "unknown_cancel_reason_share breached max 0.5 with 0.6 (2 in a row, consecutive 2)"
    );
    assert!(matches!(verdict, Verdict::Breach { .. }));
}

#[tokio::test]
async fn a_lost_connection_is_inconclusive_then_reopened() {
    let db = common::fresh_db().await;
    let mut sampler = Sampler::new(&sql("SELECT 1"), &db.dsn);
    assert_eq!(sampler.sample().await, Observation::Value(1.0));
    let killed = db
        .query_i64(&format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE application_name = 'pgshepherd-check' AND datname = '{}'",
            db.name
        ))
        .await;
    assert_eq!(killed, 1);
    // Depending on when the client notices, the next sample either reconnects at
    // once or reports the lost connection; by the one after, it has reconnected.
    let next = sampler.sample().await;
    if next != Observation::Value(1.0) {
        assert!(matches!(next, Observation::Inconclusive { .. }), "{next:?}");
        assert_eq!(sampler.sample().await, Observation::Value(1.0));
    }
}

#[tokio::test]
async fn an_unreachable_database_is_inconclusive() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dsn: Dsn = format!("postgres://nobody:pw@127.0.0.1:{port}/nothing")
        .parse()
        .unwrap();
    let obs = sample_once(&sql("SELECT 1"), &dsn).await;
    assert_inconclusive(&obs, "cannot connect to postgres://nobody@127.0.0.1");
    let Observation::Inconclusive { reason } = obs else {
        unreachable!()
    };
    assert!(!reason.contains("pw"), "{reason}");
    assert_inconclusive(
        &sample_once(&builtin(BuiltinSignal::LockWaitingSessions), &dsn).await,
        "cannot connect",
    );
}

// ---------------------------------------------------------------- HTTP

#[derive(Clone)]
struct Route {
    path: &'static str,
    status: u16,
    body: &'static str,
    delay: Duration,
}

fn route(path: &'static str, status: u16, body: &'static str) -> Route {
    Route {
        path,
        status,
        body,
        delay: Duration::ZERO,
    }
}

/// A minimal HTTP/1.1 server: one response per connection, then close.
async fn serve(routes: Vec<Route>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let routes = routes.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&request).to_string();
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                let r = routes
                    .iter()
                    .find(|r| r.path == path)
                    .cloned()
                    .unwrap_or(route("", 404, "not found"));
                tokio::time::sleep(r.delay).await;
                let response = format!(
                    "HTTP/1.1 {} Whatever\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
                    r.status,
                    r.body.len(),
                    r.body
                );
                let _ = sock.write_all(response.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    format!("http://{addr}")
}

fn no_db() -> Dsn {
    "postgres://unused@127.0.0.1:1/unused".parse().unwrap()
}

#[tokio::test]
async fn http_latency_and_json_pointer_values() {
    let base = serve(vec![
        route("/health", 200, "ok"),
        Route {
            delay: Duration::from_millis(150),
            ..route("/slow", 200, "ok")
        },
        route(
            "/metrics",
            200,
            r#"{"queue": {"depth": 17, "ratio": 0.25}}"#,
        ),
    ])
    .await;
    let timeout = Duration::from_secs(2);
    // The latency is in milliseconds: more than the server's own delay, and no
    // more than the time the test itself waited for the sample.
    let latency = |path: &'static str| {
        let c = http(format!("{base}{path}"), None, timeout);
        async move {
            let started = Instant::now();
            let obs = sample_once(&c, &no_db()).await;
            let waited_ms = started.elapsed().as_secs_f64() * 1000.0;
            let Observation::Value(ms) = obs else {
                panic!("no latency for {path}: {obs:?}")
            };
            (ms, waited_ms)
        }
    };
    let (fast, waited) = latency("/health").await;
    assert!(
        fast > 0.0 && fast <= waited,
        "{fast} ms, waited {waited} ms"
    );
    let (slow, waited) = latency("/slow").await;
    assert!(
        slow >= 150.0 && slow <= waited,
        "{slow} ms, waited {waited} ms"
    );
    let depth = sample_once(
        &http(format!("{base}/metrics"), Some("/queue/depth"), timeout),
        &no_db(),
    )
    .await;
    assert_eq!(depth, Observation::Value(17.0));
    let ratio = sample_once(
        &http(format!("{base}/metrics"), Some("/queue/ratio"), timeout),
        &no_db(),
    )
    .await;
    assert_eq!(ratio, Observation::Value(0.25));
}

#[tokio::test]
async fn http_unexpected_status_is_a_failed_sample_that_breaches() {
    let base = serve(vec![route("/down", 503, r#"{"depth": 1}"#)]).await;
    let c = http(format!("{base}/down"), None, Duration::from_secs(2));
    let started = Instant::now();
    let obs = sample_once(&c, &no_db()).await;
    let waited_ms = started.elapsed().as_secs_f64() * 1000.0;
    let Observation::Failed {
        value: Some(latency),
        reason,
    } = &obs
    else {
        panic!("{obs:?}")
    };
    // The latency of the failed request, in milliseconds.
    assert!(
        *latency > 0.0 && *latency <= waited_ms,
        "{latency} ms, waited {waited_ms} ms"
    );
    assert_eq!(reason, "HTTP status 503 Service Unavailable, expected 200");
    let mut state = CheckState::new(
        &Check {
            thresholds: Thresholds {
                max: Some(1e9),
                ..Default::default()
            },
            ..c
        },
        None,
    );
    let verdict = state
        .observe(&obs)
        .verdict
        .expect("a failure breaches whatever the thresholds");
    assert!(
        verdict.message().starts_with("probe failed with "),
        "{}",
        verdict.message()
    );
    // With a pointer the status still decides first.
    let with_pointer = sample_once(
        &http(
            format!("{base}/down"),
            Some("/depth"),
            Duration::from_secs(2),
        ),
        &no_db(),
    )
    .await;
    assert!(
        matches!(with_pointer, Observation::Failed { value: None, .. }),
        "{with_pointer:?}"
    );
}

#[tokio::test]
async fn http_unusable_bodies_are_inconclusive() {
    let base = serve(vec![
        route(
            "/metrics",
            200,
            r#"{"queue": {"depth": null, "name": "q"}}"#,
        ),
        route("/html", 200, "<html>oops</html>"),
    ])
    .await;
    let t = Duration::from_secs(2);
    for (path, pointer, reason) in [
        (
            "/metrics",
            "/queue/missing",
            "no value at JSON pointer /queue/missing",
        ),
        (
            "/metrics",
            "/queue/depth",
            "JSON pointer /queue/depth is null",
        ),
        ("/metrics", "/queue/name", "is a string, not a number"),
        ("/html", "/queue/depth", "response body is not JSON"),
    ] {
        assert_inconclusive(
            &sample_once(&http(format!("{base}{path}"), Some(pointer), t), &no_db()).await,
            reason,
        );
    }
}

#[tokio::test]
async fn http_timeout_and_refused_connection_are_inconclusive() {
    // A server that answers in an hour: a sample that comes back at all was
    // cut off by its timeout.
    let base = serve(vec![Route {
        delay: Duration::from_secs(3600),
        ..route("/hang", 200, "late")
    }])
    .await;
    let obs = common::within(
        "the sample",
        sample_once(
            &http(format!("{base}/hang"), None, Duration::from_millis(200)),
            &no_db(),
        ),
    )
    .await;
    assert_inconclusive(&obs, "timed out after 200ms");

    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let c = http(
        format!("http://user:secret@127.0.0.1:{port}/health"),
        None,
        Duration::from_secs(2),
    );
    let obs = sample_once(&c, &no_db()).await;
    assert_inconclusive(&obs, "cannot connect");
    assert!(!format!("{obs:?}").contains("secret"), "{obs:?}");
}

// ---------------------------------------------------------------- builtins

/// Samples until `done` accepts a value (statistics reach the views a moment
/// after the fact); returns every observation, the accepted one last. Panics
/// with them after [`common::PATIENCE`].
async fn sample_until(sampler: &mut Sampler, done: impl Fn(f64) -> bool) -> Vec<Observation> {
    let deadline = Instant::now() + common::PATIENCE;
    let mut seen = Vec::new();
    loop {
        let obs = sampler.sample().await;
        let hit = matches!(obs, Observation::Value(v) if done(v));
        seen.push(obs);
        if hit {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "no accepted value after {:?}: {seen:?}",
            common::PATIENCE
        );
        // Rates are per second between two readings: give each one time to
        // cover something.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlocks_per_second_sees_a_real_deadlock() {
    let db = common::fresh_db().await;
    db.execute("CREATE TABLE d (id int PRIMARY KEY, v int); INSERT INTO d VALUES (1, 0), (2, 0);")
        .await;
    let mut sampler = Sampler::new(&builtin(BuiltinSignal::DeadlocksPerSecond), &db.dsn);
    sampler.prime().await;
    assert_eq!(sampler.sample().await, Observation::Value(0.0));

    let a = app_session(&db.dsn, "app-a").await;
    let b = app_session(&db.dsn, "app-b").await;
    for s in [&a, &b] {
        // Detect it quickly; superuser-only, so ignore a refusal.
        let _ = s.batch_execute("SET deadlock_timeout = '100ms'").await;
    }
    a.batch_execute("BEGIN; UPDATE d SET v = 1 WHERE id = 1")
        .await
        .unwrap();
    b.batch_execute("BEGIN; UPDATE d SET v = 1 WHERE id = 2")
        .await
        .unwrap();
    let (ra, rb) = tokio::join!(
        a.batch_execute("UPDATE d SET v = 2 WHERE id = 2"),
        b.batch_execute("UPDATE d SET v = 2 WHERE id = 1"),
    );
    let deadlocked = [&ra, &rb]
        .iter()
        .filter(|r| r.as_ref().err().and_then(|e| e.code()).map(|c| c.code()) == Some("40P01"))
        .count();
    assert_eq!(deadlocked, 1, "{ra:?} {rb:?}");
    let _ = a.batch_execute("ROLLBACK").await;
    let _ = b.batch_execute("ROLLBACK").await;
    // Backends flush their statistics on exit at the latest.
    drop((a, b));

    let seen = sample_until(&mut sampler, |v| v > 0.0).await;
    assert!(
        matches!(seen.last(), Some(Observation::Value(v)) if *v > 0.0),
        "{seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollbacks_per_second_rises_when_a_session_rolls_back() {
    let db = common::fresh_db().await;
    let mut sampler = Sampler::new(&builtin(BuiltinSignal::RollbacksPerSecond), &db.dsn);
    sampler.prime().await;
    let quiet = sample_until(&mut sampler, |v| v == 0.0).await;
    assert_eq!(
        quiet.last(),
        Some(&Observation::Value(0.0)),
        "the checks' own transactions are not rollbacks"
    );

    let app = app_session(&db.dsn, "app").await;
    for _ in 0..20 {
        app.batch_execute("BEGIN; SELECT 1; ROLLBACK")
            .await
            .unwrap();
    }
    drop(app);
    let seen = sample_until(&mut sampler, |v| v > 0.0).await;
    assert!(
        matches!(seen.last(), Some(Observation::Value(v)) if *v > 0.0),
        "{seen:?}"
    );
}

#[tokio::test]
async fn a_rate_needs_two_readings() {
    let db = common::fresh_db().await;
    let mut sampler = Sampler::new(&builtin(BuiltinSignal::DeadlocksPerSecond), &db.dsn);
    assert_inconclusive(&sampler.sample().await, "a rate needs two");
    assert!(matches!(sampler.sample().await, Observation::Value(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_waiting_sessions_counts_a_session_blocked_on_a_row_lock() {
    let db = common::fresh_db().await;
    db.execute("CREATE TABLE r (id int PRIMARY KEY, v int); INSERT INTO r VALUES (1, 0);")
        .await;
    let mut sampler = Sampler::new(&builtin(BuiltinSignal::LockWaitingSessions), &db.dsn);
    assert_eq!(sampler.sample().await, Observation::Value(0.0));

    let holder = hold_row_one(&db.dsn).await;
    let blocked = app_session(&db.dsn, "app-blocked").await;
    let ours = app_session(&db.dsn, "pgshepherd-migrate").await;
    let blocked_update = tokio::spawn(async move {
        blocked
            .batch_execute("UPDATE r SET v = 1 WHERE id = 1")
            .await
    });
    let our_update =
        tokio::spawn(async move { ours.batch_execute("UPDATE r SET v = 2 WHERE id = 1").await });
    // Both are queued behind the row lock before the sample looks.
    db.wait_for(
        "both updates waiting on the row lock",
        "SELECT count(*) = 2 FROM pg_stat_activity WHERE datname = current_database() \
           AND wait_event_type = 'Lock' AND application_name IN ('app-blocked', 'pgshepherd-migrate')",
    )
    .await;
    assert_eq!(
        sampler.sample().await,
        Observation::Value(1.0),
        "pgshepherd's own waiter is excluded"
    );
    holder.batch_execute("COMMIT").await.unwrap();
    blocked_update.await.unwrap().unwrap();
    our_update.await.unwrap().unwrap();
    assert_eq!(sampler.sample().await, Observation::Value(0.0));
}

/// Issue 10: as a role without `pg_read_all_stats`, another role's sessions show
/// up with NULL state, wait event and transaction start; a count over them would
/// read 0 while they wait. Such samples are inconclusive, naming the role and the
/// grant, and become real values once the role may see them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtins_that_cannot_see_other_roles_sessions_are_inconclusive() {
    let db = common::fresh_db().await;
    let role = format!("watcher_{}", db.name.split('_').next().unwrap());
    db.execute(&format!(
        "CREATE ROLE {role} LOGIN; CREATE TABLE r (id int PRIMARY KEY); INSERT INTO r VALUES (1);"
    ))
    .await;
    let url = db.url.replacen("postgres@", &format!("{role}@"), 1);
    let watcher: Dsn = url.parse().unwrap();
    // Another role's transaction, holding a row lock that a second one waits on.
    let holder = hold_row_one(&db.dsn).await;
    let blocked = app_session(&db.dsn, "app-blocked").await;
    let blocked_delete =
        tokio::spawn(async move { blocked.batch_execute("DELETE FROM r WHERE id = 1").await });
    db.wait_for(
        "the delete waiting on the row lock",
        "SELECT count(*) = 1 FROM pg_stat_activity WHERE datname = current_database() \
           AND wait_event_type = 'Lock' AND application_name = 'app-blocked'",
    )
    .await;

    for signal in [
        BuiltinSignal::LockWaitingSessions,
        BuiltinSignal::LongestTransactionSeconds,
    ] {
        let obs = sample_once(&builtin(signal), &watcher).await;
        assert_inconclusive(&obs, &format!("hidden from role {role}"));
        assert_inconclusive(&obs, &format!("GRANT pg_read_all_stats TO {role}"));
    }

    db.execute(&format!("GRANT pg_read_all_stats TO {role}"))
        .await;
    assert_eq!(
        sample_once(&builtin(BuiltinSignal::LockWaitingSessions), &watcher).await,
        Observation::Value(1.0)
    );
    let obs = sample_once(&builtin(BuiltinSignal::LongestTransactionSeconds), &watcher).await;
    assert!(matches!(obs, Observation::Value(v) if v > 0.0), "{obs:?}");
    holder.batch_execute("COMMIT").await.unwrap();
    blocked_delete.await.unwrap().unwrap();
}

#[tokio::test]
async fn longest_transaction_seconds_sees_an_open_transaction() {
    let db = common::fresh_db().await;
    let mut sampler = Sampler::new(&builtin(BuiltinSignal::LongestTransactionSeconds), &db.dsn);
    assert_eq!(
        sampler.sample().await,
        Observation::Value(0.0),
        "no open transaction is a real 0"
    );

    let ours = app_session(&db.dsn, "pgshepherd-migrate").await;
    ours.batch_execute("BEGIN; SELECT 1").await.unwrap();
    // Part of the scenario: pgshepherd's transaction is the older one by a
    // clear margin, so a sample of its age cannot pass for the app's.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let app = app_session(&db.dsn, "app").await;
    app.batch_execute("BEGIN; SELECT 1").await.unwrap();
    // The app's transaction's age read just before and just after the sample
    // brackets the sample if it measured the app's transaction; pgshepherd's is
    // older by the gap between the two BEGINs, so it would land above the
    // bracket whenever the bracket is narrower than that gap (a very slow
    // machine gets another try).
    let probe = db.client().await;
    let app_age = "SELECT extract(epoch FROM clock_timestamp() - xact_start)::float8 \
                   FROM pg_stat_activity WHERE application_name = 'app' AND datname = current_database()";
    let gap: f64 = probe
        .query_one(
            "SELECT extract(epoch FROM max(xact_start) - min(xact_start))::float8 FROM pg_stat_activity \
              WHERE application_name IN ('app', 'pgshepherd-migrate') AND datname = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(gap >= 2.0, "{gap}");
    let shared = tokio::sync::Mutex::new(sampler);
    let (before, age, after) =
        common::eventually("a sample bracketed narrower than the gap", || async {
            let before: f64 = probe.query_one(app_age, &[]).await.unwrap().get(0);
            let obs = shared.lock().await.sample().await;
            let after: f64 = probe.query_one(app_age, &[]).await.unwrap().get(0);
            let Observation::Value(age) = obs else {
                panic!("{obs:?}")
            };
            (after - before < gap).then_some((before, age, after))
        })
        .await;
    assert!(
        before <= age && age <= after,
        "the app's transaction, not pgshepherd's: {age} s, the app's was {before}..{after} s old"
    );
    let mut sampler = shared.into_inner();
    app.batch_execute("COMMIT").await.unwrap();
    ours.batch_execute("COMMIT").await.unwrap();
    assert_eq!(sampler.sample().await, Observation::Value(0.0));
}
