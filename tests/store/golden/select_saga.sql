-- SELECT_SAGA: the saga row by id (run on SQLite only, by Tx.peek and Tx.lock). Built in sagas/store/statements.py::SELECT_SAGA.
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
  saga.forked_from
FROM saga
WHERE saga.id = %(saga_id)s::VARCHAR
