//! Plans: YAML parsed into raw structs, then compiled into a validated [`Plan`]
//! or every problem with its `FILE:LINE:COLUMN`.

pub mod diagnostic;
pub mod duration;
pub mod model;

pub use diagnostic::{Diagnostic, Diagnostics};
pub use model::*;
