-- Retention (src/daemon/retention.rs): what has been pruned of each finished
-- run, so that every pass looks only at the runs that still have something to
-- prune. Each flag is set once per run; checkpoint writes of active runs never
-- touch these columns, so their updates stay HOT.
ALTER TABLE runs
    ADD COLUMN samples_pruned       boolean NOT NULL DEFAULT false,
    ADD COLUMN events_pruned        boolean NOT NULL DEFAULT false,
    ADD COLUMN notifications_pruned boolean NOT NULL DEFAULT false;

CREATE INDEX runs_samples_to_prune ON runs (finished_at)
    WHERE phase = 'finished' AND NOT samples_pruned;
CREATE INDEX runs_events_to_prune ON runs (finished_at)
    WHERE phase = 'finished' AND NOT events_pruned;
CREATE INDEX runs_notifications_to_prune ON runs (finished_at)
    WHERE phase = 'finished' AND NOT notifications_pruned;

-- Unauthenticated requests are audited one row per source address and minute
-- (src/daemon/api/audit.rs): `count` is how many requests the row stands for,
-- `source` the peer address they came from.
ALTER TABLE audit
    ADD COLUMN source text,
    ADD COLUMN count  integer NOT NULL DEFAULT 1;
