-- CLEAR_OUTBOXES: the same for many sagas at once (DeferredClears, Store.clear_outbox_soon). Built in sagas/store/statements.py::CLEAR_OUTBOXES.
UPDATE saga
SET
  outbox=NULL,
  outbox_at=%(outbox_at)s::TIMESTAMP WITH TIME ZONE
FROM jsonb_to_recordset(%(clears)s::JSONB) AS c(
  id VARCHAR(128),
  at TIMESTAMP WITH TIME ZONE
)
WHERE
  saga.id = c.id
  AND saga.outbox_at = c.at
