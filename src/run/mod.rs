//! A run: its lifecycle (one pure transition function and the layer that
//! persists before it acts), the runner that performs the effects, and events.
//!
//! - [`lifecycle`]: states × inputs → next state and effects. The one place
//!   that decides a transition.
//! - [`driver`]: the effects layer: persists the next state, then hands out the
//!   effects and the permit a change to the target needs.
//! - [`runner`], [`prepare`], [`locking`], [`undo`]: perform the effects.
//! - [`event`], [`render`], [`journal`]: the typed events, their one human
//!   rendering, where they go.

pub mod checkpoint;
pub mod driver;
pub mod dry_run;
pub mod event;
pub mod journal;
pub mod lifecycle;
pub mod locking;
pub mod prepare;
pub mod render;
pub mod runner;
pub mod state;
pub mod undo;

pub use driver::Finished;
pub use event::{Event, EventKind, Outcome, Step};
pub use runner::{RunOptions, Runner};
