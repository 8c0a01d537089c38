//! Undo that keeps users' writes: the rows a migration changed are captured while
//! it runs ([`capture`]) and can be given back later, row by row, leaving alone
//! what users changed since ([`revert`]).

pub mod capture;
pub mod revert;
