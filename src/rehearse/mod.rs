//! Rehearsal: prove on a copy that a change's down scripts give back what its
//! up scripts took. [`fingerprint`] reads a database's catalog into one
//! sorted structure; [`diff`] says, object by object, what differs between two;
//! [`rehearsal`] runs the migrations up, down and up again on a scratch copy,
//! which [`scratch`] makes from the target; [`copy`] does all of it, for
//! `pgshepherd rehearse` and the daemon alike.

pub mod copy;
pub mod data;
pub mod diff;
pub mod fingerprint;
pub mod rehearsal;
pub mod scratch;

pub use diff::{Change, Difference, diff};
pub use fingerprint::{Fingerprint, FingerprintError, ObjectKind};
pub use rehearsal::{Rehearsal, RehearsalError, rehearse};
