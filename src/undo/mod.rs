//! Undo that keeps users' writes: the rows a migration changed are captured while
//! it runs ([`capture`]) and can be given back later, row by row, leaving alone
//! what users changed since ([`revert`]); [`outcome`] says what a report means
//! (outcome word and exit code).

pub mod capture;
pub mod outcome;
pub mod revert;
