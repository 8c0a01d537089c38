//! Where a run's events go: the journal file (the record a person can undo the run
//! from by hand), JSON lines on stdout, and human progress on stderr.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};

use tokio::sync::oneshot;

use crate::output;
use crate::private_fs;
use crate::run::checkpoint::{Checkpoint, RunFacts, RunSink};
use crate::run::event::{Event, EventKind, Step};
use crate::run::render;
use crate::run::state::RunState;

/// Append-only JSON-lines journal plus the latest persisted state, in
/// `<dir>/<run_id>.jsonl` and `<dir>/<run_id>.state.json`.
///
/// Writes and fsyncs happen on a thread of their own, off the async path: an
/// event is queued, and the thread appends what has queued up and fsyncs it
/// once. Queue order is kept, and a state snapshot is written only after every
/// event queued before it is fsynced; [`Emitter::save_state`] waits for that,
/// and the runner changes the target only after it, so every event that led
/// to a change is durable before the change. Dropping the journal flushes it.
pub struct Journal {
    path: PathBuf,
    tx: Option<mpsc::Sender<Queued>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

enum Queued {
    Line(Vec<u8>),
    State(Vec<u8>, oneshot::Sender<io::Result<()>>),
}

impl Journal {
    pub fn create(dir: &Path, run_id: &str) -> io::Result<Journal> {
        // The journal names tables, versions and failures of a production
        // database: private, like the backups next to it.
        private_fs::create_dir_all(dir)?;
        let path = dir.join(format!("{run_id}.jsonl"));
        let file = private_fs::open(&path, OpenOptions::new().create(true).append(true))?;
        let state_path = dir.join(format!("{run_id}.state.json"));
        let (tx, rx) = mpsc::channel();
        let shown = path.clone();
        let writer = std::thread::Builder::new()
            .name("pgshepherd-journal".into())
            .spawn(move || write_loop(file, &shown, &state_path, rx))?;
        Ok(Journal {
            path,
            tx: Some(tx),
            writer: Some(writer),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn append(&self, event: &Event) {
        let Ok(mut line) = serde_json::to_vec(event) else {
            return;
        };
        line.push(b'\n');
        if let Some(tx) = &self.tx {
            let _ = tx.send(Queued::Line(line));
        }
    }

    /// Persist the state atomically (write, rename), after every event queued
    /// before it is fsynced. The snapshot is not fsynced itself: a rename is
    /// atomic against a crash of the process, and the journal, which is
    /// fsynced, holds the same transitions for recovery after a crash of the
    /// machine.
    async fn save_state(&self, checkpoint: &Checkpoint) -> io::Result<()> {
        let bytes = serde_json::to_vec_pretty(checkpoint)?;
        let (done, written) = oneshot::channel();
        let gone = || io::Error::other("the journal writer has stopped");
        self.tx
            .as_ref()
            .ok_or_else(gone)?
            .send(Queued::State(bytes, done))
            .map_err(|_| gone())?;
        written.await.map_err(|_| gone())?
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        // Closing the queue lets the writer finish what is queued and stop.
        drop(self.tx.take());
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// The journal's thread: append lines, fsync once per batch, write snapshots in
/// queue order.
fn write_loop(mut file: File, path: &Path, state_path: &Path, rx: mpsc::Receiver<Queued>) {
    let warn = |what: &str, e: &io::Error| {
        output::note(format_args!(
            "warning: cannot {what} {}: {e}",
            path.display()
        ))
    };
    let mut next = rx.recv().ok();
    while let Some(first) = next.take() {
        let mut pending = Some(first);
        let mut unsynced = false;
        // Everything queued so far, up to the next snapshot, shares one fsync.
        while let Some(Queued::Line(line)) = &pending {
            if let Err(e) = file.write_all(line) {
                warn("write the run journal", &e);
            }
            unsynced = true;
            pending = rx.try_recv().ok();
        }
        // The journal is how a person reconstructs what happened after a crash.
        if unsynced && let Err(e) = file.sync_data() {
            warn("write the run journal", &e);
        }
        match pending {
            Some(Queued::State(bytes, done)) => {
                let tmp = state_path.with_extension("json.tmp");
                let written = private_fs::write(&tmp, &bytes)
                    .and_then(|()| std::fs::rename(&tmp, state_path));
                let _ = done.send(written);
                next = rx.recv().ok();
            }
            Some(Queued::Line(_)) => unreachable!("lines are drained above"),
            None => next = rx.recv().ok(),
        }
    }
}

/// Fans events out to the journal, stdout (`--json`), stderr (human), the
/// daemon's state database (a [`RunSink`]) and in-process observers; persists
/// checkpoints to the journal and the sink.
pub struct Emitter {
    run_id: String,
    journal: Option<Journal>,
    json: bool,
    human: bool,
    observers: Vec<Observer>,
    sink: Option<Arc<dyn RunSink>>,
    /// Facts the run has established so far; saved with every checkpoint.
    facts: Mutex<RunFacts>,
}

/// Something that reacts to events in-process (the demo's simulated application,
/// later the daemon's subscribers).
pub type Observer = Box<dyn Fn(&Event) + Send + Sync>;

impl Emitter {
    pub fn new(run_id: &str, journal: Option<Journal>, json: bool, human: bool) -> Emitter {
        Emitter {
            run_id: run_id.to_string(),
            journal,
            json,
            human,
            observers: Vec::new(),
            sink: None,
            facts: Mutex::new(RunFacts::default()),
        }
    }

    /// Events and checkpoints also go to `sink` (the daemon's state database).
    pub fn with_sink(mut self, sink: Arc<dyn RunSink>) -> Emitter {
        self.sink = Some(sink);
        self
    }

    /// Start from facts a previous process established (a resumed run).
    pub fn with_facts(self, facts: RunFacts) -> Emitter {
        *self.facts.lock().unwrap_or_else(|e| e.into_inner()) = facts;
        self
    }

    pub fn facts(&self) -> RunFacts {
        self.facts.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Record a fact; it is persisted with the next checkpoint.
    pub fn set_fact(&self, update: impl FnOnce(&mut RunFacts)) {
        update(&mut self.facts.lock().unwrap_or_else(|e| e.into_inner()));
    }

    pub fn observe(mut self, observer: Observer) -> Emitter {
        self.observers.push(observer);
        self
    }

    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    pub fn journal_path(&self) -> Option<String> {
        self.journal
            .as_ref()
            .map(|j| j.path().display().to_string())
    }

    pub fn emit(&self, step: Option<Step>, kind: EventKind) {
        let event = Event {
            ts: chrono::Utc::now(),
            run_id: self.run_id.clone(),
            step,
            kind,
        };
        if let Some(j) = &self.journal {
            j.append(&event);
        }
        // A closed stdout (`run --json | head`) is ignored, not a reason to stop:
        // the reader leaving is not a stop request (see `crate::output`), and
        // the journal keeps every event.
        if self.json
            && let Ok(line) = serde_json::to_string(&event)
        {
            let mut out = io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
        if self.human
            && let Some(text) = render::human(&event)
        {
            output::note(text);
        }
        for observer in &self.observers {
            observer(&event);
        }
        if let Some(sink) = &self.sink {
            sink.event(&event);
        }
    }

    /// Persist the state with the facts known so far, before the side effect it
    /// leads to. A journal failure is reported but does not stop a foreground run,
    /// whose target-side history stays authoritative; the daemon's sink resolves
    /// only once the checkpoint is durable (and never, if the run was taken over).
    pub(in crate::run) async fn save_state(&self, state: &RunState) {
        let checkpoint = Checkpoint {
            state: state.clone(),
            facts: self.facts(),
        };
        if let Some(j) = &self.journal
            && let Err(e) = j.save_state(&checkpoint).await
        {
            output::note(format_args!(
                "warning: cannot persist the run state next to {}: {e}",
                j.path().display()
            ));
        }
        if let Some(sink) = &self.sink {
            sink.save(checkpoint).await;
        }
    }

    /// A progress line on stderr only (not an event): backup bytes, soak ticks.
    pub fn progress(&self, text: &str) {
        if self.human {
            output::note(text);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::event::Outcome;

    fn lines(path: &Path) -> usize {
        std::fs::read_to_string(path).unwrap().lines().count()
    }

    #[tokio::test]
    async fn a_snapshot_follows_every_event_queued_before_it_and_dropping_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::create(dir.path(), "r1").unwrap();
        let path = journal.path().to_path_buf();
        let events = Emitter::new("r1", Some(journal), false, false);
        for _ in 0..200 {
            events.emit(None, EventKind::LockAcquired { waited_ms: 1 });
        }
        events.save_state(&RunState::Locking).await;
        // The snapshot was written after the 200 events, which are on disk.
        assert_eq!(lines(&path), 200);
        let state = std::fs::read_to_string(dir.path().join("r1.state.json")).unwrap();
        assert!(state.contains("\"locking\""), "{state}");
        events.emit(
            None,
            EventKind::RunFinished {
                outcome: Outcome::Succeeded,
                reason: None,
                exit_code: 0,
                applied: vec![],
                backup: None,
                journal: None,
            },
        );
        drop(events);
        assert_eq!(lines(&path), 201);
    }
}
