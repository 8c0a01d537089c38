//! A run: the persisted state machine, its executor and its events.

pub mod checkpoint;
pub mod dry_run;
pub mod event;
pub mod executor;
pub mod journal;
pub mod render;
pub mod state;

pub use event::{Event, EventKind, Outcome, Step};
pub use executor::{Finished, RunOptions, Runner};
