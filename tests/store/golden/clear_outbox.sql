-- CLEAR_OUTBOX: mark the outbox written at written_at published (Store.clear_outbox). Built in sagas/store/statements.py::CLEAR_OUTBOX.
UPDATE saga
SET
  outbox=NULL,
  outbox_at=%(outbox_at)s::TIMESTAMP WITH TIME ZONE
WHERE
  saga.id = %(saga_id)s::VARCHAR
  AND saga.outbox_at = %(written_at)s::TIMESTAMP WITH TIME ZONE
