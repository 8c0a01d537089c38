-- pgshepherd:no-transaction
DROP INDEX CONCURRENTLY IF EXISTS idx_job_summaries_cancel_reason;
