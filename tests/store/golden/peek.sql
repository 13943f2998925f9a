-- PEEK: now() and the saga row if it exists, always one row (Store.peek, Tx.peek). Built in sagas/store/statements.py::PEEK.
SELECT
  now() AS db_now,
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
  saga.forked_from
FROM (
  SELECT %(param_1)s::INTEGER AS one
) AS one
LEFT OUTER JOIN saga ON saga.id = %(saga_id)s::VARCHAR
