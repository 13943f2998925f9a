-- INSERT_SAGA: a new saga in one statement: its row (s), steps (t) and first history rows. Built in sagas/store/statements.py::INSERT_SAGA.
WITH
  s AS (
    INSERT INTO saga (
      id,
      name,
      kind,
      version,
      state,
      payload,
      payload_hash,
      correlation_id,
      failure,
      created_at,
      updated_at,
      finished_at,
      deadline_at,
      wake_at,
      outbox,
      outbox_at,
      parked,
      lock_version,
      definition_hash,
      trace_context,
      paused_at,
      forked_from
    )
    VALUES (
      %(s_id)s::VARCHAR,
      %(s_name)s::VARCHAR,
      %(s_kind)s::VARCHAR,
      %(s_version)s::INTEGER,
      %(s_state)s::VARCHAR,
      %(s_payload)s::JSONB,
      %(s_payload_hash)s::VARCHAR,
      %(s_correlation_id)s::VARCHAR,
      %(s_failure)s::JSONB,
      %(s_created_at)s::TIMESTAMP WITH TIME ZONE,
      %(s_updated_at)s::TIMESTAMP WITH TIME ZONE,
      %(s_finished_at)s::TIMESTAMP WITH TIME ZONE,
      %(s_deadline_at)s::TIMESTAMP WITH TIME ZONE,
      %(s_wake_at)s::TIMESTAMP WITH TIME ZONE,
      %(s_outbox)s::JSONB,
      %(s_outbox_at)s::TIMESTAMP WITH TIME ZONE,
      %(s_parked)s,
      %(s_lock_version)s::INTEGER,
      %(s_definition_hash)s::VARCHAR,
      %(s_trace_context)s::JSONB,
      %(s_paused_at)s::TIMESTAMP WITH TIME ZONE,
      %(s_forked_from)s::VARCHAR
    )
  ),
  t AS (
    INSERT INTO saga_step (
      saga_id,
      idx,
      name,
      state,
      attempt,
      compensation_attempt,
      result,
      error,
      started_at,
      finished_at,
      deadline_at,
      next_attempt_at,
      in_doubt,
      timeout_at,
      heartbeat_at,
      progress
    )
    SELECT
      %(t_saga)s::VARCHAR AS anon_1,
      steps.idx AS idx,
      steps.name AS name,
      steps.state AS state,
      steps.attempt AS attempt,
      steps.compensation_attempt AS compensation_attempt,
      steps.result AS result,
      steps.error AS error,
      steps.started_at AS started_at,
      steps.finished_at AS finished_at,
      steps.deadline_at AS deadline_at,
      steps.next_attempt_at AS next_attempt_at,
      steps.in_doubt AS in_doubt,
      steps.timeout_at AS timeout_at,
      steps.heartbeat_at AS heartbeat_at,
      steps.progress AS progress
    FROM jsonb_to_recordset(%(steps)s::JSONB) AS steps(
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
  )
INSERT INTO saga_event (
  saga_id,
  at,
  kind,
  step,
  attempt,
  detail
)
SELECT
  %(e_saga)s::VARCHAR AS anon_2,
  %(e_at)s::TIMESTAMP WITH TIME ZONE AS anon_3,
  events.kind,
  events.step,
  events.attempt,
  events.detail
FROM jsonb_to_recordset(%(events)s::JSONB) AS events(
  kind VARCHAR(32),
  step VARCHAR(64),
  attempt INTEGER,
  detail JSONB
)
