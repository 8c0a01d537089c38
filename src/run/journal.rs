//! Where a run's events go: the journal file (the record a person can undo the run
//! from by hand), JSON lines on stdout, and human progress on stderr.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::output;
use crate::private_fs;
use crate::run::checkpoint::{Checkpoint, RunFacts, RunSink};
use crate::run::event::{Event, EventKind, Step};
use crate::run::render;
use crate::run::state::RunState;

/// Append-only JSON-lines journal plus the latest persisted state, in
/// `<dir>/<run_id>.jsonl` and `<dir>/<run_id>.state.json`.
pub struct Journal {
    path: PathBuf,
    state_path: PathBuf,
    file: File,
}

impl Journal {
    pub fn create(dir: &Path, run_id: &str) -> io::Result<Journal> {
        // The journal names tables, versions and failures of a production
        // database: private, like the backups next to it.
        private_fs::create_dir_all(dir)?;
        let path = dir.join(format!("{run_id}.jsonl"));
        let file = private_fs::open(&path, OpenOptions::new().create(true).append(true))?;
        Ok(Journal {
            state_path: dir.join(format!("{run_id}.state.json")),
            path,
            file,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn append(&mut self, event: &Event) -> io::Result<()> {
        let mut line = serde_json::to_vec(event)?;
        line.push(b'\n');
        self.file.write_all(&line)?;
        // The journal is how a person reconstructs what happened after a crash.
        self.file.sync_data()
    }

    /// Persist the state atomically (write, rename). The snapshot is not fsynced:
    /// a rename is atomic against a crash of the process, and the journal, which
    /// is fsynced event by event, holds the same transitions for recovery after
    /// a crash of the machine. One fsync per step instead of two keeps the
    /// bookkeeping of a 100-migration set small next to the migrations themselves.
    pub fn save_state(&self, checkpoint: &Checkpoint) -> io::Result<()> {
        let tmp = self.state_path.with_extension("json.tmp");
        private_fs::write(&tmp, &serde_json::to_vec_pretty(checkpoint)?)?;
        std::fs::rename(&tmp, &self.state_path)
    }
}

/// Fans events out to the journal, stdout (`--json`), stderr (human), the
/// daemon's state database (a [`RunSink`]) and in-process observers; persists
/// checkpoints to the journal and the sink.
pub struct Emitter {
    run_id: String,
    journal: Option<Mutex<Journal>>,
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
            journal: journal.map(Mutex::new),
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
        self.journal.as_ref().map(|j| {
            j.lock()
                .unwrap_or_else(|e| e.into_inner())
                .path()
                .display()
                .to_string()
        })
    }

    pub fn emit(&self, step: Option<Step>, kind: EventKind) {
        let event = Event {
            ts: chrono::Utc::now(),
            run_id: self.run_id.clone(),
            step,
            kind,
        };
        if let Some(j) = &self.journal {
            let mut j = j.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = j.append(&event) {
                output::note(format_args!(
                    "warning: cannot write the run journal {}: {e}",
                    j.path().display()
                ));
            }
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
        if let Some(j) = &self.journal {
            let j = j.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = j.save_state(&checkpoint) {
                output::note(format_args!(
                    "warning: cannot persist the run state next to {}: {e}",
                    j.path().display()
                ));
            }
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
