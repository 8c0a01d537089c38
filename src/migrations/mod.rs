//! Migration sets and how they are applied to and undone on a target.

pub mod apply;
pub mod directive;
pub mod flyway;
pub mod history;
mod scan;
pub mod set;
pub mod split;

pub use set::{Migration, MigrationSet, Script};
