-- Showing a run reads the latest sample of each check. Without this index that
-- meant reading every check_sample of the run (an hour's soak at 1 s with a few
-- checks is ~10,000 rows); with it, a few index probes per check.
CREATE INDEX events_check_samples ON events (run_id, (event->>'check'), id)
    WHERE name = 'check_sample';

-- A run's row is rewritten about twice a second while it is active (checkpoints
-- and lease renewals), never changing an indexed column: leave room on each page
-- so those updates stay on the page (HOT) instead of bloating the table and its
-- indexes.
ALTER TABLE runs SET (fillfactor = 50);
