//! Plans: YAML parsed into a located tree, then compiled into a validated [`Plan`]
//! or every problem with its `FILE:LINE:COLUMN`.
//!
//! - [`tree`]: YAML to a tree of nodes that know their position (serde-saphyr,
//!   with budgets against hostile input);
//! - [`compile`]: the tree to the [`model`], collecting all errors;
//! - [`explain`](mod@explain): the `explain` section (the EXPLAIN gate's queries);
//! - [`load`](mod@load): files in, plan or diagnostics out; [`load()`] is the entry point.

mod checks;
pub mod compile;
pub mod diagnostic;
pub mod duration;
pub mod explain;
pub mod load;
pub mod model;
pub mod suggest;
pub mod tree;
pub mod walk;

pub use compile::MigrationSource;
pub use diagnostic::{Diagnostic, Diagnostics};
pub use load::{load, load_str};
pub use model::*;
