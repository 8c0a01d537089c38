//! A plan (and, when known, one of its runs) into the on-call document: what
//! changes, how to tell it is unhealthy, how to undo it by hand, how to verify
//! the undo, and who gets paged.
//!
//! Invariants: the document never contains a connection string (commands read
//! the target's from `$PGSHEPHERD_DATABASE_URL`, HTTP check URLs are redacted,
//! channels are named, never addressed); every value a person would otherwise
//! have to look up (run id, archive, sha256) is either the run's own or a
//! placeholder in angle brackets that the document says is one.

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::{DateTime, Utc};

use super::document::{Block, Document, Line, b, c, t};
use crate::migrations::Migration;
use crate::notify::config::Policy;
use crate::plan::{CheckSource, Delta, InconclusivePolicy, Plan, RollbackStrategy, Thresholds};
use crate::steps::backup::ArchiveFormat;

/// The environment variable every command in the document reads the target from.
pub const URL_VAR: &str = "PGSHEPHERD_DATABASE_URL";

/// What the document knows about one run of the plan.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    pub run_id: String,
    /// The verified backup the run took; `None` when it took none (yet), or
    /// when its manifest cannot be read here.
    pub backup: Option<BackupRecord>,
    /// Why the run's recorded backup cannot be shown (its manifest unreadable).
    pub backup_unreadable: Option<String>,
}

/// A verified backup, as its manifest records it.
#[derive(Debug, Clone, PartialEq)]
pub struct BackupRecord {
    pub archive: PathBuf,
    pub manifest: PathBuf,
    pub sha256: String,
    pub format: ArchiveFormat,
    pub created_at: DateTime<Utc>,
    /// Versions applied when the backup was taken: where a restore returns to.
    pub applied_versions: Vec<i64>,
}

pub struct Input<'a> {
    pub plan: &'a Plan,
    pub run: Option<&'a RunRecord>,
    /// The escalation policies of a daemon config, when one was given.
    pub policies: Option<&'a BTreeMap<String, Policy>>,
}

const RUN_PLACEHOLDER: &str = "<RUN_ID>";
const ARCHIVE_PLACEHOLDER: &str = "<ARCHIVE>";
const SHA_PLACEHOLDER: &str = "<SHA256>";

/// The whole document.
pub fn compose(input: &Input<'_>) -> Document {
    let plan = input.plan;
    let mut blocks = Vec::new();
    intro(input, &mut blocks);
    what_changes(plan, &mut blocks);
    unhealthy(plan, &mut blocks);
    undo(input, &mut blocks);
    verify(input, &mut blocks);
    paging(input, &mut blocks);
    Document {
        title: format!("Runbook: {}", plan.name),
        blocks,
    }
}

fn run_id<'a>(input: &'a Input<'_>) -> &'a str {
    input.run.map_or(RUN_PLACEHOLDER, |r| r.run_id.as_str())
}

fn intro(input: &Input<'_>, out: &mut Vec<Block>) {
    let plan = input.plan;
    out.push(Block::Items(vec![
        vec![t("Plan: "), c(plan.path.display().to_string())],
        vec![t("Target: "), c(&plan.target)],
        vec![t("Migration set: "), c(&plan.migrations.name)],
        vec![
            t("Rollback strategy: "),
            c(plan.rollback.strategy.as_str()),
            t(strategy_words(plan.rollback.strategy)),
        ],
        match input.run {
            Some(run) => vec![t("Run: "), c(&run.run_id)],
            None => vec![
                t("Run: none given. "),
                b("Placeholders:"),
                t(" words in angle brackets, such as "),
                c(RUN_PLACEHOLDER),
                t(", stand for a run's values; "),
                c("pgshepherd runbook PLAN --run RUN_ID"),
                t(" fills them in from the run's journal."),
            ],
        },
    ]));
    out.push(Block::Para(vec![
        t("Commands below read the target's connection string from the environment variable "),
        c(format!("${URL_VAR}")),
        t(" (this document never contains it). Acknowledge first, so the paging stops: "),
        c(format!("pgshepherd ack {}", run_id(input))),
        t("."),
    ]));
}

fn strategy_words(s: RollbackStrategy) -> &'static str {
    match s {
        RollbackStrategy::Down => " (on a breach pgshepherd runs the down scripts, newest first)",
        RollbackStrategy::Restore => " (on a breach pgshepherd restores the verified backup)",
        RollbackStrategy::Hold => " (on a breach pgshepherd changes nothing and pages a person)",
    }
}

fn what_changes(plan: &Plan, out: &mut Vec<Block>) {
    out.push(Block::Heading(2, vec![t("1. What changes")]));
    let count = plan.migrations.migrations.len();
    out.push(Block::Para(vec![
        t(format!(
            "{count} migration{} of set ",
            if count == 1 { "" } else { "s" }
        )),
        c(&plan.migrations.name),
        t(", applied in this order (versions already applied on the target are skipped)."),
    ]));
    for m in &plan.migrations.migrations {
        out.push(Block::Heading(3, vec![c(m.label())]));
        let mut facts: Vec<Line> = vec![vec![
            t("File "),
            c(&m.up.file),
            t(", sha256 "),
            c(&m.up.checksum),
        ]];
        if !m.up.transactional {
            facts.push(vec![t(
                "Runs outside a transaction (no-transaction): cut off halfway, it leaves its history row in state 'started'.",
            )]);
        }
        if !m.up.capture.is_empty() {
            facts.push(vec![
                t("Captures the rows it changes in "),
                c(m.up.capture.join(", ")),
                t(", so that they can be given back."),
            ]);
        }
        out.push(Block::Items(facts));
        out.push(Block::Code {
            lang: "sql",
            text: m.up.sql.clone(),
        });
    }
}

fn unhealthy(plan: &Plan, out: &mut Vec<Block>) {
    out.push(Block::Heading(2, vec![t("2. How to tell it is unhealthy")]));
    let soak = &plan.soak;
    out.push(Block::Para(vec![t(format!(
        "After the migrations pgshepherd watches {} check{} for {}, one sample every {}; baselines come from {} sample{} taken before the change. The queries are plain SQL: run them with ",
        soak.checks.len(),
        if soak.checks.len() == 1 { "" } else { "s" },
        crate::plan::duration::format(soak.duration),
        crate::plan::duration::format(soak.interval),
        soak.baseline_samples,
        if soak.baseline_samples == 1 { "" } else { "s" },
    )), c(format!("psql \"${URL_VAR}\"")), t(" to see for yourself.")]));
    for check in &soak.checks {
        out.push(Block::Heading(3, vec![t("Check "), c(&check.name)]));
        let mut facts: Vec<Line> = vec![
            vec![
                t("Unhealthy when the value is "),
                t(thresholds_words(&check.thresholds)),
                t(format!(
                    ", {} sample{} in a row.",
                    check.consecutive,
                    if check.consecutive == 1 { "" } else { "s" }
                )),
            ],
            vec![t(format!(
                "Missing data (NULL, no row, an error, a timeout of {}): after {} in a row, {}.",
                crate::plan::duration::format(check.timeout),
                check.max_inconclusive,
                inconclusive_words(check.on_inconclusive),
            ))],
        ];
        match &check.source {
            CheckSource::Sql { .. } => {}
            CheckSource::Http(probe) => {
                let statuses: Vec<String> =
                    probe.expect_status.iter().map(u16::to_string).collect();
                facts.push(vec![
                    t("HTTP GET "),
                    c(crate::pg::dsn::redact_text(&probe.url)),
                    t(format!(
                        "; a status other than {} is a breaching sample; the value is ",
                        statuses.join(", ")
                    )),
                    match &probe.json_pointer {
                        Some(p) => c(p.clone()),
                        None => t("the response time in milliseconds"),
                    },
                    t(match &probe.json_pointer {
                        Some(_) => " in the response body.",
                        None => ".",
                    }),
                ]);
            }
            CheckSource::Builtin(signal) => {
                let (_, counter) = crate::checks::builtin::reading(*signal);
                facts.push(match counter {
                    Some(counter) => vec![
                        t("Built-in "),
                        c(signal.as_str()),
                        t(": the change of "),
                        c(counter),
                        t(" per second between two readings of:"),
                    ],
                    None => vec![t("Built-in "), c(signal.as_str()), t(", read with:")],
                });
            }
        }
        out.push(Block::Items(facts));
        match &check.source {
            CheckSource::Sql { query } => out.push(Block::Code {
                lang: "sql",
                text: query.trim().to_string(),
            }),
            CheckSource::Builtin(signal) => out.push(Block::Code {
                lang: "sql",
                text: crate::checks::builtin::reading(*signal).0.to_string(),
            }),
            CheckSource::Http(_) => {}
        }
    }
    if plan.explain.is_empty() {
        return;
    }
    out.push(Block::Heading(3, vec![t("EXPLAIN gate")]));
    out.push(Block::Para(vec![t(
        "Right after the migrations, before the soak, each query is explained again and compared with its plan from before the change; a failure rolls back like a breach.",
    )]));
    for q in &plan.explain {
        let mut rules: Vec<Line> = Vec::new();
        if let Some(index) = &q.expect_index {
            rules.push(vec![t("The plan must use index "), c(index), t(".")]);
        }
        if let Some(ratio) = q.max_cost_ratio {
            rules.push(vec![t(format!(
                "The total cost may be at most {ratio} times the cost before."
            ))]);
        }
        if q.analyze {
            rules.push(vec![t(
                "Explained with ANALYZE (the query is executed, read-only, time-boxed).",
            )]);
        }
        if let Some(ratio) = q.max_time_ratio {
            rules.push(vec![t(format!(
                "The execution time may be at most {ratio} times the time before."
            ))]);
        }
        out.push(Block::Para(vec![t("Query "), c(&q.name), t(":")]));
        if !rules.is_empty() {
            out.push(Block::Items(rules));
        }
        out.push(Block::Code {
            lang: "sql",
            text: format!(
                "EXPLAIN ({}FORMAT JSON)\n{}",
                if q.analyze { "ANALYZE, " } else { "" },
                q.sql.trim()
            ),
        });
    }
}

fn thresholds_words(th: &Thresholds) -> String {
    let delta = |d: &Delta, dir: &str| match d {
        Delta::Absolute(x) => format!("more than {x} {dir} the baseline"),
        Delta::Percent(p) => format!("more than {p}% {dir} the baseline"),
    };
    let mut parts = Vec::new();
    if let Some(min) = th.min {
        parts.push(format!("below {min}"));
    }
    if let Some(max) = th.max {
        parts.push(format!("above {max}"));
    }
    if let Some(d) = &th.max_increase {
        parts.push(delta(d, "above"));
    }
    if let Some(d) = &th.max_decrease {
        parts.push(delta(d, "below"));
    }
    parts.join(", or ")
}

fn inconclusive_words(p: InconclusivePolicy) -> &'static str {
    match p {
        InconclusivePolicy::Breach => "it counts as a breach",
        InconclusivePolicy::Hold => "the run stops and waits for a person (nothing undone)",
        InconclusivePolicy::Ignore => {
            "the soak goes on (only the minimum of valid samples protects the verdict)"
        }
    }
}

fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn history_query(plan: &Plan) -> String {
    format!(
        "SELECT version, name, state, run_id, applied_at\n  FROM pgshepherd.history\n WHERE migration_set = {}\n ORDER BY version;",
        sql_literal(&plan.migrations.name)
    )
}

fn history_delete(plan: &Plan, m: &Migration) -> String {
    format!(
        "DELETE FROM pgshepherd.history WHERE migration_set = {} AND version = {};",
        sql_literal(&plan.migrations.name),
        m.version
    )
}

fn undo(input: &Input<'_>, out: &mut Vec<Block>) {
    let plan = input.plan;
    out.push(Block::Heading(2, vec![t("3. How to undo it by hand")]));
    out.push(Block::Para(vec![
        t("First see what is applied on the target; "),
        c("pgshepherd.history"),
        t(" is the authority. Undo only the versions this run applied, newest first."),
    ]));
    out.push(Block::Code {
        lang: "sql",
        text: history_query(plan),
    });
    match plan.rollback.strategy {
        RollbackStrategy::Down => down_steps(input, out),
        RollbackStrategy::Restore => {
            out.push(Block::Heading(3, vec![t("Restore the backup")]));
            restore_steps(input, out);
            if has_any_down(plan) {
                out.push(Block::Heading(
                    3,
                    vec![t("Without the backup: the down scripts")],
                ));
                out.push(Block::Para(vec![t(
                    "If the backup cannot be used and these scripts undo the change, they keep the writes made since the backup:",
                )]));
                down_steps(input, out);
            }
        }
        RollbackStrategy::Hold => {
            out.push(Block::Para(vec![t(
                "The plan holds: pgshepherd undoes nothing itself. Decide with the change's owner whether it stays; if it goes:",
            )]));
            if has_any_down(plan) {
                down_steps(input, out);
            }
            if plan.backup.enabled {
                out.push(Block::Heading(
                    3,
                    vec![t("Last resort: restore the backup")],
                ));
                restore_steps(input, out);
            }
        }
    }
}

fn has_any_down(plan: &Plan) -> bool {
    plan.migrations
        .migrations
        .iter()
        .any(|m| m.down.is_some() || !m.up.capture.is_empty())
}

fn down_steps(input: &Input<'_>, out: &mut Vec<Block>) {
    let plan = input.plan;
    let run = run_id(input);
    out.push(Block::Para(vec![
        t("Run each step with "),
        c(format!("psql \"${URL_VAR}\" -v ON_ERROR_STOP=1")),
        t(", newest version first, skipping versions the history does not show as applied."),
    ]));
    for m in plan.migrations.migrations.iter().rev() {
        out.push(Block::Heading(3, vec![t("Undo "), c(m.label())]));
        if !m.up.capture.is_empty() {
            let mode = plan.rollback.data_conflicts.as_str();
            out.push(Block::Para(vec![
                t("Give back the rows it changed in "),
                c(m.up.capture.join(", ")),
                t(" first, keeping what users wrote since (the plan's mode is "),
                c(mode),
                t("). Look with --dry-run, then run it:"),
            ]));
            let undo = format!(
                "pgshepherd undo {run} --database-url \"${URL_VAR}\" --version {} --mode {mode}",
                m.version
            );
            out.push(Block::Code {
                lang: "sh",
                text: format!("{undo} --dry-run\n{undo}"),
            });
        }
        let then = if m.up.capture.is_empty() {
            "Its down script "
        } else {
            "Then its down script "
        };
        match &m.down {
            Some(down) if down.transactional => {
                out.push(Block::Para(vec![
                    t(then),
                    c(&down.file),
                    t(" and the removal of its history row, in one transaction:"),
                ]));
                out.push(Block::Code {
                    lang: "sql",
                    text: format!(
                        "BEGIN;\n{}\n{}\nCOMMIT;",
                        down.sql.trim_end(),
                        history_delete(plan, m)
                    ),
                });
            }
            Some(down) => {
                out.push(Block::Para(vec![
                    t(then),
                    c(&down.file),
                    t(", which runs outside a transaction (on its own, not inside BEGIN):"),
                ]));
                out.push(Block::Code {
                    lang: "sql",
                    text: down.sql.trim_end().to_string(),
                });
                out.push(Block::Para(vec![t(
                    "and once it succeeded, its history row:",
                )]));
                out.push(Block::Code {
                    lang: "sql",
                    text: history_delete(plan, m),
                });
            }
            None if !m.up.capture.is_empty() => {
                // `pgshepherd undo` by hand records the undo on the history row
                // (`last_undo`) but keeps the row; only a rollback removes it.
                out.push(Block::Para(vec![
                    t("It has no down script: giving back its rows is its whole undo. "),
                    c("pgshepherd undo"),
                    t(" keeps its history row (marked with the undo), so remove it once the undo reverted everything:"),
                ]));
                out.push(Block::Code {
                    lang: "sql",
                    text: history_delete(plan, m),
                });
            }
            None => {
                out.push(Block::Para(vec![
                    b("No down script"),
                    t(": it cannot be undone with scripts. Restore the backup, or fix forward."),
                ]));
            }
        }
    }
}

fn restore_steps(input: &Input<'_>, out: &mut Vec<Block>) {
    let plan = input.plan;
    let run = run_id(input);
    let backup = input.run.and_then(|r| r.backup.as_ref());
    match (input.run, backup) {
        (Some(_), Some(bk)) => out.push(Block::Items(vec![
            vec![t("Archive: "), c(bk.archive.display().to_string())],
            vec![t("Manifest: "), c(bk.manifest.display().to_string())],
            vec![t("sha256: "), c(&bk.sha256)],
            vec![t(format!(
                "Taken {} with versions {:?} applied: the restore returns the database, pgshepherd.history included, to that.",
                bk.created_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                bk.applied_versions
            ))],
        ])),
        (Some(r), None) if r.backup_unreadable.is_some() => out.push(Block::Para(vec![
            b("The backup cannot be shown"),
            t(format!(
                ": {}. Read the archive, its sha256 and format from that manifest on the host that took the backup; ",
                r.backup_unreadable.as_deref().unwrap_or_default()
            )),
            c(ARCHIVE_PLACEHOLDER),
            t(" and "),
            c(SHA_PLACEHOLDER),
            t(" below stand for them."),
        ])),
        (Some(r), None) => out.push(Block::Para(vec![
            b("This run recorded no verified backup"),
            t(format!(
                " ({} has no backup in its journal): there is nothing of its own to restore.",
                r.run_id
            )),
        ])),
        (None, _) => out.push(Block::Para(vec![
            t("The archive and its sha256 are in the manifest named by "),
            c("facts.backup_manifest"),
            t(" of "),
            c(format!("pgshepherd status {RUN_PLACEHOLDER} --json")),
            t(" (or the "),
            c("backup_verified"),
            t(" event of the run's journal); "),
            c(ARCHIVE_PLACEHOLDER),
            t(" and "),
            c(SHA_PLACEHOLDER),
            t(" below stand for them."),
        ])),
    }
    let archive = backup.map_or(ARCHIVE_PLACEHOLDER.to_string(), |b| {
        b.archive.display().to_string()
    });
    let sha = backup.map_or(SHA_PLACEHOLDER, |b| b.sha256.as_str());
    let format = backup.map_or(plan.backup.format.into(), |b| b.format);
    out.push(Block::Para(vec![
        b("Every write made since the backup is lost."),
        t(" Keep them first (a dump of the database as it is now), and the sequence values, so that ids already handed out are not handed out again:"),
    ]));
    out.push(Block::Code {
        lang: "sh",
        text: format!(
            "pg_dump --format=custom --file=before-restore-{run}.dump \"${URL_VAR}\"\n\
             psql \"${URL_VAR}\" -At -c \"SELECT format('SELECT setval(%L, %s);', format('%I.%I', schemaname, sequencename), last_value) FROM pg_sequences WHERE last_value IS NOT NULL\" > sequences-{run}.sql"
        ),
    });
    out.push(Block::Para(vec![
        t("Check that the archive is the one that was verified; the output must be "),
        c(sha),
        t(":"),
    ]));
    out.push(Block::Code {
        lang: "sh",
        text: match format {
            ArchiveFormat::Custom => format!("sha256sum {}", shell_word(&archive)),
            ArchiveFormat::Directory => format!(
                "(cd {} && sha256sum * | LC_ALL=C sort -k2 | sha256sum)",
                shell_word(&archive)
            ),
        },
    });
    out.push(Block::Para(vec![
        t("Restore it in one transaction (a failure leaves the database as it was), then set the sequences forward again. "),
        c("--clean"),
        t(" drops only what the archive holds: a table, function or type a migration created after the backup stays; drop it by hand (the down scripts show what each migration created)."),
    ]));
    out.push(Block::Code {
        lang: "sh",
        text: format!(
            "pg_restore --clean --if-exists --single-transaction --exit-on-error --dbname=\"${URL_VAR}\" {}\n\
             psql \"${URL_VAR}\" -v ON_ERROR_STOP=1 -f sequences-{run}.sql",
            shell_word(&archive)
        ),
    });
}

/// A path as one shell word: single-quoted unless it is plainly safe. A
/// placeholder stays as it is, to be replaced by the reader.
fn shell_word(s: &str) -> String {
    let plain = |ch: char| ch.is_ascii_alphanumeric() || "/._-+:=@%,".contains(ch);
    if s.starts_with('<') || s.chars().all(plain) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

fn verify(input: &Input<'_>, out: &mut Vec<Block>) {
    let plan = input.plan;
    out.push(Block::Heading(2, vec![t("4. How to verify the undo")]));
    let expected: Line = match (
        plan.rollback.strategy,
        input.run.and_then(|r| r.backup.as_ref()),
    ) {
        (RollbackStrategy::Restore, Some(bk)) => vec![t(format!(
            "The history shows exactly versions {:?} (those of the backup):",
            bk.applied_versions
        ))],
        _ => vec![t(
            "The history shows none of the undone versions (and no row in state 'started'):",
        )],
    };
    out.push(Block::Para(expected));
    out.push(Block::Code {
        lang: "sql",
        text: history_query(plan),
    });
    let verified: Vec<&Migration> = plan
        .migrations
        .migrations
        .iter()
        .rev()
        .filter(|m| m.verify.is_some())
        .collect();
    if !verified.is_empty() {
        out.push(Block::Para(vec![t(
            "Each verify script succeeds while its migration is in place. After the undo it should fail, or show that what it checks for is gone:",
        )]));
        for m in verified {
            if let Some(v) = &m.verify {
                out.push(Block::Para(vec![c(&v.file)]));
                out.push(Block::Code {
                    lang: "sql",
                    text: v.sql.trim_end().to_string(),
                });
            }
        }
    }
    out.push(Block::Para(vec![t(format!(
        "Then the checks of section 2 must be back within their thresholds (pgshepherd itself re-runs them for {} after an automatic rollback).",
        crate::plan::duration::format(plan.rollback.confirm)
    ))]));
}

fn paging(input: &Input<'_>, out: &mut Vec<Block>) {
    let plan = input.plan;
    out.push(Block::Heading(2, vec![t("5. Who gets paged")]));
    let mut items: Vec<Line> = Vec::new();
    if plan.notify.channels.is_empty() {
        items.push(vec![t("Channels: none.")]);
    } else {
        let mut line = vec![t("Channels told of every step: ")];
        for (i, ch) in plan.notify.channels.iter().enumerate() {
            if i > 0 {
                line.push(t(", "));
            }
            line.push(c(ch));
        }
        items.push(line);
    }
    match &plan.notify.escalation {
        None => items.push(vec![t(
            "Escalation: none; nobody is paged beyond the channels above.",
        )]),
        Some(name) => {
            items.push(vec![t("Escalation policy: "), c(name)]);
            match input.policies.map(|p| p.get(name)) {
                None => items.push(vec![t(
                    "Its levels are in the daemon's config (pass --config FILE to list them here).",
                )]),
                Some(None) => items.push(vec![b(
                    "The given config defines no such policy: nobody would be paged.",
                )]),
                Some(Some(policy)) => {
                    for (i, level) in policy.levels.iter().enumerate() {
                        let mut line = vec![t(format!("Level {}: ", i + 1))];
                        for (j, ch) in level.channels.iter().enumerate() {
                            if j > 0 {
                                line.push(t(", "));
                            }
                            line.push(c(ch));
                        }
                        let last = i + 1 == policy.levels.len();
                        let delay = crate::plan::duration::format(level.delay);
                        line.push(t(match (last, policy.repeat) {
                            (false, _) => format!("; the next level after {delay} without an ack."),
                            (true, 0) => ".".to_string(),
                            (true, _) => format!("; the next pass after {delay} without an ack."),
                        }));
                        items.push(line);
                    }
                    items.push(vec![t(format!(
                        "{} more pass{} through the levels; {}",
                        policy.repeat,
                        if policy.repeat == 1 { "" } else { "es" },
                        if policy.on_breach {
                            "pages on a breach, on needs_human and on a failed rollback."
                        } else {
                            "pages on needs_human and on a failed rollback (not on a breach that rolled back)."
                        }
                    ))]);
                }
            }
        }
    }
    items.push(vec![
        t("Stop the paging: "),
        c(format!("pgshepherd ack {}", run_id(input))),
    ]);
    out.push(Block::Items(items));
}
