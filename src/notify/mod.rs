//! Notifications: what the daemon tells people about runs, and how it makes sure
//! they hear it.
//!
//! A state change that is worth a message becomes one [`Notice`] per channel,
//! rendered for that channel's kind ([`render`]) and written to the outbox in the
//! same transaction as the change ([`outbox`]). Delivery workers send what the
//! outbox holds, signed for `generic` channels ([`sign`]), retrying until the
//! receiver takes it ([`deliver`]). Runs that need a person page the levels of an
//! escalation policy until someone acknowledges ([`escalation`]).

pub mod config;
pub mod deliver;
pub mod escalation;
pub mod notices;
pub mod outbox;
pub mod progress;
pub mod render;
pub mod sign;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// How much a notice matters; channels can ask for a minimum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// The kinds of notice, as channels filter them (`channels.NAME.events`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeKind {
    Submitted,
    ApprovalNeeded,
    Approved,
    WaitingForWindow,
    WindowOpened,
    BackupVerified,
    MigrationApplied,
    SoakStarted,
    SoakProgress,
    Breach,
    RollbackStarted,
    /// The backup was restored: where the pre-restore snapshot is, what was discarded.
    BackupRestored,
    RollbackFinished,
    RollbackFailed,
    Succeeded,
    Stopped,
    NeedsHuman,
    /// A level of an escalation policy is paged.
    Escalation,
    Acknowledged,
    /// An undo of a run's captured data changes started (through the daemon).
    UndoStarted,
    /// It ended: what was reverted, what conflicted.
    UndoFinished,
}

impl NoticeKind {
    pub const ALL: &'static [NoticeKind] = &[
        NoticeKind::Submitted,
        NoticeKind::ApprovalNeeded,
        NoticeKind::Approved,
        NoticeKind::WaitingForWindow,
        NoticeKind::WindowOpened,
        NoticeKind::BackupVerified,
        NoticeKind::MigrationApplied,
        NoticeKind::SoakStarted,
        NoticeKind::SoakProgress,
        NoticeKind::Breach,
        NoticeKind::RollbackStarted,
        NoticeKind::BackupRestored,
        NoticeKind::RollbackFinished,
        NoticeKind::RollbackFailed,
        NoticeKind::Succeeded,
        NoticeKind::Stopped,
        NoticeKind::NeedsHuman,
        NoticeKind::Escalation,
        NoticeKind::Acknowledged,
        NoticeKind::UndoStarted,
        NoticeKind::UndoFinished,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NoticeKind::Submitted => "submitted",
            NoticeKind::ApprovalNeeded => "approval_needed",
            NoticeKind::Approved => "approved",
            NoticeKind::WaitingForWindow => "waiting_for_window",
            NoticeKind::WindowOpened => "window_opened",
            NoticeKind::BackupVerified => "backup_verified",
            NoticeKind::MigrationApplied => "migration_applied",
            NoticeKind::SoakStarted => "soak_started",
            NoticeKind::SoakProgress => "soak_progress",
            NoticeKind::Breach => "breach",
            NoticeKind::RollbackStarted => "rollback_started",
            NoticeKind::BackupRestored => "backup_restored",
            NoticeKind::RollbackFinished => "rollback_finished",
            NoticeKind::RollbackFailed => "rollback_failed",
            NoticeKind::Succeeded => "succeeded",
            NoticeKind::Stopped => "stopped",
            NoticeKind::NeedsHuman => "needs_human",
            NoticeKind::Escalation => "escalation",
            NoticeKind::Acknowledged => "acknowledged",
            NoticeKind::UndoStarted => "undo_started",
            NoticeKind::UndoFinished => "undo_finished",
        }
    }

    pub fn parse(s: &str) -> Option<NoticeKind> {
        NoticeKind::ALL.iter().copied().find(|k| k.as_str() == s)
    }
}

/// One message about one run, before it is shaped for a channel kind. Every
/// field is safe to show: no DSN, token or secret ever gets here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notice {
    pub kind: NoticeKind,
    pub severity: Severity,
    pub ts: DateTime<Utc>,
    pub run_id: String,
    pub target: String,
    pub plan: String,
    /// One line: what happened. "Breach on orders-db: p99_ms 412 > max 250".
    pub title: String,
    /// A few sentences: what happened and why.
    pub summary: String,
    /// What a person should do now, when anything (`pgshepherd ack RUN`, ...).
    pub next_step: Option<String>,
    /// A runbook link or section for this situation, when one applies.
    pub runbook: Option<String>,
    /// The figures behind it, in order: value, threshold, baseline, counts, the
    /// query or URL that measured it...
    pub facts: Vec<Fact>,
    /// Set on escalation pages: which policy and level.
    pub escalation: Option<EscalationStep>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fact {
    pub label: String,
    pub value: String,
}

impl Fact {
    pub fn new(label: impl Into<String>, value: impl Into<String>) -> Fact {
        Fact {
            label: label.into(),
            value: value.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EscalationStep {
    pub policy: String,
    /// 1-based level being paged, of `levels`.
    pub level: u32,
    pub levels: u32,
    /// 1-based pass through the levels (a policy may repeat).
    pub pass: u32,
    /// What triggered it: `needs_human`, `rollback_failed` or `breach`.
    pub trigger: NoticeKind,
}
