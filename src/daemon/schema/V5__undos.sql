-- Undos asked for through the API (POST /v1/runs/{id}/undo): giving back the
-- rows a finished run's migrations changed (captured), keeping users' writes.
-- An undo is a change to the target like a run: it may wait for approval, it
-- queues with the target's runs, and one daemon at a time drives it under a
-- lease with a fencing epoch (src/daemon/undo/).
CREATE TABLE undos (
    id                 bigserial PRIMARY KEY,
    run_id             text NOT NULL REFERENCES runs (id),
    -- Its place in the target's queue, from the runs' own sequence: an undo
    -- goes after the runs (and undos) asked for before it, and before those
    -- asked for after it.
    seq                bigint NOT NULL UNIQUE DEFAULT nextval('runs_seq_seq'),
    target             text NOT NULL,
    requested_by       text NOT NULL,
    requested_at       timestamptz NOT NULL DEFAULT now(),
    -- What to undo: these versions (every captured one when empty), in this
    -- mode, only the changes matching `predicate`; a dry run changes nothing.
    versions           bigint[] NOT NULL DEFAULT '{}',
    mode               text NOT NULL,
    predicate          text,
    dry_run            boolean NOT NULL,
    requires_approval  boolean NOT NULL,
    approved_by        text,
    approved_at        timestamptz,
    cancelled_by       text,
    -- pending_approval | queued | active | finished (src/daemon/undo/lifecycle.rs)
    phase              text NOT NULL,
    -- reverted | conflicts_left | refused | failed | cancelled
    outcome            text,
    reason             text,
    exit_code          integer,
    -- The undo's report: counts per table, conflicts, the target's undo record.
    report             jsonb,
    -- How many times a daemon started it (more than one: a daemon died
    -- during it, and the undo, one transaction on the target, ran again).
    attempts           integer NOT NULL DEFAULT 0,
    owner              text,
    epoch              bigint NOT NULL DEFAULT 0,
    lease_until        timestamptz,
    started_at         timestamptz,
    finished_at        timestamptz,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    CHECK (phase IN ('pending_approval', 'queued', 'active', 'finished'))
);

CREATE INDEX undos_open_by_target ON undos (target, seq) WHERE phase <> 'finished';
CREATE INDEX undos_by_run ON undos (run_id, id);
