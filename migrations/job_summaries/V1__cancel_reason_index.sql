-- pgshepherd:no-transaction
-- The cancellations dashboard filters on results->>'cancel_reason'. A GIN index on
-- (results -> 'cancel_reason') does not serve `results->>'cancel_reason' = $1`;
-- a btree on the exact expression the query uses does.
CREATE INDEX CONCURRENTLY idx_job_summaries_cancel_reason
    ON job_execution_summaries ((results ->> 'cancel_reason'));

-- Statistics for the new expression, so the planner knows its selectivity.
ANALYZE job_execution_summaries;
