-- The demo's scenario: a job runner's execution summaries, cancellations among
-- them, about a fifth of the cancelled jobs without a cancel_reason (the key is
-- absent, or JSON null).
CREATE TABLE IF NOT EXISTS job_execution_summaries (
    id          bigserial PRIMARY KEY,
    job_name    text        NOT NULL,
    status      text        NOT NULL CHECK (status IN ('succeeded', 'failed', 'cancelled')),
    results     jsonb       NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);

INSERT INTO job_execution_summaries (job_name, status, results, created_at, finished_at)
SELECT 'job-' || (g % 97),
       s.status,
       CASE
           WHEN s.status <> 'cancelled' THEN jsonb_build_object('exit_code', CASE s.status WHEN 'failed' THEN 1 ELSE 0 END)
           WHEN (g / 5) % 10 = 0 THEN '{}'::jsonb
           WHEN (g / 5) % 10 = 5 THEN '{"cancel_reason": null}'::jsonb
           ELSE jsonb_build_object('cancel_reason',
                (ARRAY['user_request', 'timeout', 'superseded', 'quota_exceeded'])[1 + (g / 5) % 4])
       END,
       now() - make_interval(mins => g),
       now() - make_interval(mins => g) + interval '90 seconds'
  FROM generate_series(1, 20000) AS g
 CROSS JOIN LATERAL (SELECT CASE WHEN g % 5 = 0 THEN 'cancelled' WHEN g % 11 = 0 THEN 'failed' ELSE 'succeeded' END AS status) AS s
 WHERE NOT EXISTS (SELECT 1 FROM job_execution_summaries LIMIT 1);

ANALYZE job_execution_summaries;
