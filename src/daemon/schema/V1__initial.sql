-- pgshepherd's own state: submissions with their immutable plan bundles, the runs
-- they become, each run's event history, and the audit trail of API actions.
-- Created and upgraded by the daemon itself (refinery, embedded migrations).

CREATE TABLE runs (
    id                  text PRIMARY KEY,
    -- Submission order: runs on one target start in this order.
    seq                 bigserial NOT NULL UNIQUE,
    target              text NOT NULL,
    plan_name           text NOT NULL,
    -- The submitted plan's file name and the whole bundle (plan text plus every
    -- migration file's content); immutable, see the trigger below.
    plan_path           text NOT NULL,
    bundle              jsonb NOT NULL,
    bundle_sha256       text NOT NULL,
    submitted_by        text NOT NULL,
    submitted_at        timestamptz NOT NULL DEFAULT now(),
    requires_approval   boolean NOT NULL,
    approved_by         text,
    approved_at         timestamptz,
    abort_requested_by  text,
    abort_requested_at  timestamptz,
    acked_by            text,
    acked_at            timestamptz,
    -- pending_approval | queued | active | finished
    phase               text NOT NULL,
    -- The persisted checkpoint: {"state": RunState, "facts": RunFacts}.
    checkpoint          jsonb NOT NULL,
    state_name          text NOT NULL,
    outcome             text,
    reason              text,
    exit_code           integer,
    -- The lease: which daemon drives the run, until when, and the fencing epoch
    -- every state write of that daemon must still match.
    owner               text,
    epoch               bigint NOT NULL DEFAULT 0,
    lease_until         timestamptz,
    started_at          timestamptz,
    finished_at         timestamptz,
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CHECK (phase IN ('pending_approval', 'queued', 'active', 'finished'))
);

CREATE INDEX runs_open_by_target ON runs (target, seq) WHERE phase <> 'finished';

CREATE FUNCTION pgshepherd_bundle_is_immutable() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.bundle IS DISTINCT FROM OLD.bundle
       OR NEW.bundle_sha256 IS DISTINCT FROM OLD.bundle_sha256
       OR NEW.plan_path IS DISTINCT FROM OLD.plan_path
       OR NEW.submitted_by IS DISTINCT FROM OLD.submitted_by THEN
        RAISE EXCEPTION 'a submitted plan bundle is immutable (run %)', OLD.id;
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER runs_bundle_is_immutable BEFORE UPDATE ON runs
    FOR EACH ROW EXECUTE FUNCTION pgshepherd_bundle_is_immutable();

CREATE TABLE events (
    id      bigserial PRIMARY KEY,
    run_id  text NOT NULL REFERENCES runs (id),
    ts      timestamptz NOT NULL,
    name    text NOT NULL,
    event   jsonb NOT NULL
);

CREATE INDEX events_by_run ON events (run_id, id);

CREATE TABLE audit (
    id      bigserial PRIMARY KEY,
    ts      timestamptz NOT NULL DEFAULT now(),
    actor   text NOT NULL,
    action  text NOT NULL,
    run_id  text,
    status  integer NOT NULL,
    detail  text
);

CREATE TABLE daemons (
    name        text PRIMARY KEY,
    started_at  timestamptz NOT NULL,
    seen_at     timestamptz NOT NULL,
    version     text NOT NULL
);
