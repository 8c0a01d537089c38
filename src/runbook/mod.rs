//! The on-call runbook of one plan (and optionally one of its runs): what
//! changes, how to tell it is unhealthy, how to undo it by hand in order, how to
//! verify the undo, and who gets paged. `pgshepherd runbook` prints it; the
//! daemon serves it for a run.
//!
//! - [`compose`](mod@compose): plan and run into a [`Document`];
//! - [`document`]: the document model and its Markdown and HTML renderings;
//! - [`record`]: what a run recorded (its verified backup), from its journal.

pub mod compose;
pub mod document;
pub mod record;

pub use compose::{BackupRecord, Input, RunRecord, compose};
pub use document::Document;
pub use record::RecordError;
