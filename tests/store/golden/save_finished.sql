-- save for a transition that ends the saga (+ finished_at): the compare-and-set write on s_expected: saga row (s), changed steps (u), history rows (e). Built in sagas/store/statements.py::save(changed_columns(t)).
WITH
  s AS (
    UPDATE saga
    SET
      state=%(s_state)s::VARCHAR,
      failure=%(s_failure)s::JSONB,
      updated_at=%(s_updated_at)s::TIMESTAMP WITH TIME ZONE,
      finished_at=%(s_finished_at)s::TIMESTAMP WITH TIME ZONE,
      wake_at=%(s_wake_at)s::TIMESTAMP WITH TIME ZONE,
      lock_version=%(s_lock_version)s::INTEGER
    WHERE
      saga.id = %(s_key)s::VARCHAR
      AND saga.lock_version = %(s_expected)s::INTEGER
    RETURNING saga.id
  ),
  u AS (
    UPDATE saga_step
    SET
      name=steps.name,
      state=steps.state,
      attempt=steps.attempt,
      compensation_attempt=steps.compensation_attempt,
      result=steps.result,
      error=steps.error,
      started_at=steps.started_at,
      finished_at=steps.finished_at,
      deadline_at=steps.deadline_at,
      next_attempt_at=steps.next_attempt_at,
      in_doubt=steps.in_doubt,
      timeout_at=steps.timeout_at,
      heartbeat_at=steps.heartbeat_at,
      progress=steps.progress
    FROM
      s,
      jsonb_to_recordset(%(steps)s::JSONB) AS steps(
        idx INTEGER,
        name VARCHAR(64),
        state VARCHAR(24),
        attempt INTEGER,
        compensation_attempt INTEGER,
        result JSONB,
        error JSONB,
        started_at TIMESTAMP WITH TIME ZONE,
        finished_at TIMESTAMP WITH TIME ZONE,
        deadline_at TIMESTAMP WITH TIME ZONE,
        next_attempt_at TIMESTAMP WITH TIME ZONE,
        in_doubt BOOLEAN,
        timeout_at TIMESTAMP WITH TIME ZONE,
        heartbeat_at TIMESTAMP WITH TIME ZONE,
        progress JSONB
      )
    WHERE
      saga_step.saga_id = s.id
      AND saga_step.idx = steps.idx
  ),
  e AS (
    INSERT INTO saga_event (
      saga_id,
      at,
      kind,
      step,
      attempt,
      detail
    )
    SELECT
      s.id AS id,
      %(e_at)s::TIMESTAMP WITH TIME ZONE AS anon_1,
      events.kind AS kind,
      events.step AS step,
      events.attempt AS attempt,
      events.detail AS detail
    FROM s
    JOIN jsonb_to_recordset(%(events)s::JSONB) AS events(
      kind VARCHAR(32),
      step VARCHAR(64),
      attempt INTEGER,
      detail JSONB
    ) ON true
  )
SELECT count(*) AS saved
FROM s
