-- The index exists and is valid (a failed concurrent build leaves it INVALID).
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1
          FROM pg_index i
          JOIN pg_class c ON c.oid = i.indexrelid
         WHERE c.relname = 'idx_job_summaries_cancel_reason' AND i.indisvalid AND i.indisready
    ) THEN
        RAISE EXCEPTION 'idx_job_summaries_cancel_reason is missing or invalid';
    END IF;
END
$$;
