//! Migration sets and how they are applied to and undone on a target.

pub mod set;

pub use set::{Migration, MigrationSet, Script};
