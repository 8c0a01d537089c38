//! A command's output on stdout, for a reader that may leave early.
//!
//! `pgshepherd logs RUN --json | head -3`: once `head` has its lines it exits,
//! and every later write to stdout fails with `EPIPE`. Rust ignores `SIGPIPE`,
//! so `println!` panics there. Commands that only print (`check`, `submit`,
//! `status`, `list`, `logs`, `approve`, `abort`, `ack`) write through [`line`],
//! which ends the process quietly with exit code 0 when the reader is gone, as a
//! command killed by `SIGPIPE` would, but without a signal a `set -o pipefail`
//! script counts as a failure.
//!
//! Why not restore `SIGPIPE`'s default in `main` instead: the signal would end
//! the process on *any* write to a closed pipe or socket, not only stdout's. For
//! `run` that means dying half-way through a migration because whoever read its
//! event stream went away; the same process also writes to pg_dump's, psql's
//! and the daemon's pipes and sockets, where a closed peer is an error to
//! handle, not a reason to die. So `run --json` keeps going when stdout closes
//! (see [`Emitter`](crate::run::journal::Emitter)): a reader leaving is not a
//! stop request; the run finishes, journals every event, and exits with its
//! outcome's code.
//!
//! Use [`line`] rather than `println!` for anything a command prints on stdout,
//! and [`note`] rather than `eprintln!` for what a run prints on stderr.

use std::fmt::Display;
use std::io::{self, Write};

/// Print `text` and a newline on stdout. If the reader has gone (`EPIPE`), exit
/// 0 at once, printing nothing more; on any other write error (a full disk
/// behind a redirect), say so on stderr and exit 1.
pub fn line(text: impl Display) {
    let written = {
        let mut out = io::stdout().lock();
        writeln!(out, "{text}").and_then(|()| out.flush())
    };
    if let Err(e) = written {
        exit_on_write_error(&e);
    }
}

fn exit_on_write_error(e: &io::Error) -> ! {
    if e.kind() == io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    // `eprintln!` would panic if stderr is gone too; nothing to report then.
    let _ = writeln!(io::stderr(), "error: cannot write to stdout: {e}");
    std::process::exit(1);
}

/// `eprintln!` without its panic: a run's progress lines, warnings and notes
/// must not stop the run half-way (a migration applied, its soak unwatched)
/// because `2>&1 | head` closed stderr. A line that cannot be written is dropped;
/// the run's journal has every event.
pub fn note(text: impl Display) {
    let _ = writeln!(io::stderr(), "{text}");
}
