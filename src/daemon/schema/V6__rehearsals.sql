-- Rehearsals of submitted runs (`rehearsal: required` in the plan): before a
-- run may be approved (or queued), a daemon proves its migrations on a
-- scratch copy of the target (src/daemon/rehearsal.rs). The run waits in the
-- phase `rehearsing` (its checkpoint says `rehearsing`, then
-- `rehearsal_failed` when the rehearsal found differences: the run can then
-- only be aborted).
ALTER TABLE runs
    ADD COLUMN rehearsal_required boolean NOT NULL DEFAULT false,
    -- The daemon rehearsing the run and until when (renewed while it works);
    -- a rehearsal whose lease ran out (its daemon died or stopped) is redone
    -- from the start by whoever claims it next. `rehearsal_attempts` counts
    -- the starts and fences the result: only the latest attempt records one.
    ADD COLUMN rehearsal_owner text,
    ADD COLUMN rehearsal_lease_until timestamptz,
    ADD COLUMN rehearsal_attempts integer NOT NULL DEFAULT 0,
    -- The result, once there is one: {"passed", "differences", "reason",
    -- "scratch", "finished_at"}.
    ADD COLUMN rehearsal jsonb;

ALTER TABLE runs DROP CONSTRAINT runs_phase_check;
ALTER TABLE runs ADD CONSTRAINT runs_phase_check
    CHECK (phase IN ('rehearsing', 'pending_approval', 'queued', 'active', 'finished'));

CREATE INDEX runs_to_rehearse ON runs (seq) WHERE phase = 'rehearsing' AND rehearsal IS NULL;
