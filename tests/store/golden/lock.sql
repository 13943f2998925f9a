-- LOCK: the saga row locked FOR UPDATE, now() and its steps as JSON (Tx.lock). Built in sagas/store/statements.py::LOCK.
SELECT
  saga.id,
  saga.name,
  saga.kind,
  saga.version,
  saga.state,
  saga.payload,
  saga.payload_hash,
  saga.correlation_id,
  saga.failure,
  saga.created_at,
  saga.updated_at,
  saga.finished_at,
  saga.deadline_at,
  saga.wake_at,
  saga.outbox,
  saga.outbox_at,
  saga.parked,
  saga.lock_version,
  saga.definition_hash,
  saga.trace_context,
  saga.paused_at,
  saga.forked_from,
  now() AS db_now,
  (
    SELECT json_agg(saga_step ORDER BY saga_step.idx) AS json_agg_1
    FROM saga_step
    WHERE saga_step.saga_id = saga.id
  ) AS steps
FROM saga
WHERE saga.id = %(saga_id)s::VARCHAR
FOR UPDATE OF saga
