-- Notifications: the outbox that delivery workers drain, the channels a 410
-- disabled, and the escalation timers of runs that need a person.

-- A run that ended needs_human holds its target's queue until acknowledged.
CREATE INDEX runs_unacked_needs_human ON runs (target)
    WHERE outcome = 'needs_human' AND acked_by IS NULL;

-- What the plan asked for: {"channels": [...], "escalation": "policy" | null}.
ALTER TABLE runs ADD COLUMN notify jsonb NOT NULL DEFAULT '{}';

-- One row per message to one channel, written in the same transaction as the
-- state change it reports. `body` is the exact payload: every retry sends the
-- same bytes under the same msg_id (the `webhook-id`).
CREATE TABLE notifications (
    id               bigserial PRIMARY KEY,
    msg_id           text NOT NULL UNIQUE,
    run_id           text NOT NULL REFERENCES runs (id),
    channel          text NOT NULL,
    kind             text NOT NULL,
    severity         text NOT NULL,
    title            text NOT NULL,
    body             text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    -- pending: to be sent (again); delivered: a 2xx came back; failed: given up
    -- (rejected, 410, or too old); dropped: never sent (the channel is disabled).
    status           text NOT NULL DEFAULT 'pending',
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    -- A delivery in flight: nobody else sends it before this.
    claimed_until    timestamptz,
    claimed_by       text,
    last_status      integer,
    last_error       text,
    last_attempt_at  timestamptz,
    delivered_at     timestamptz,
    CHECK (status IN ('pending', 'delivered', 'failed', 'dropped'))
);

-- A channel's worker sends only the oldest pending row of each run (one run's
-- messages go in order): it finds them with a skip scan over this index.
CREATE INDEX notifications_pending_by_run ON notifications (channel, run_id, id)
    WHERE status = 'pending';
CREATE INDEX notifications_by_run ON notifications (run_id, id);

-- A channel whose receiver answered 410 Gone. It stays disabled until its URL
-- changes in the config (url_sha256 no longer matches).
CREATE TABLE disabled_channels (
    channel      text PRIMARY KEY,
    url_sha256   text NOT NULL,
    disabled_at  timestamptz NOT NULL DEFAULT now(),
    reason       text NOT NULL
);

-- One escalation per run at most: the policy's levels are paged in turn until
-- someone acknowledges the run.
CREATE TABLE escalations (
    run_id       text PRIMARY KEY REFERENCES runs (id),
    policy       text NOT NULL,
    -- needs_human | rollback_failed | breach
    trigger      text NOT NULL,
    -- The notice that started it, paged to each level (JSON of notify::Notice).
    notice       jsonb NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    -- 0-based: the next level to page, and the pass through the levels.
    next_level   integer NOT NULL DEFAULT 0,
    pass         integer NOT NULL DEFAULT 0,
    next_at      timestamptz NOT NULL DEFAULT now(),
    -- active | acknowledged | exhausted
    status       text NOT NULL DEFAULT 'active',
    paged        text[] NOT NULL DEFAULT '{}',
    acked_by     text,
    acked_at     timestamptz,
    CHECK (status IN ('active', 'acknowledged', 'exhausted'))
);

CREATE INDEX escalations_due ON escalations (next_at) WHERE status = 'active';
