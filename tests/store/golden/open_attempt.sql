-- OPEN_ATTEMPT: one step's state, attempts and deadline (Store.open_attempt). Built in sagas/store/statements.py::OPEN_ATTEMPT.
SELECT
  saga_step.name,
  saga_step.state,
  saga_step.attempt,
  saga_step.compensation_attempt,
  saga_step.deadline_at
FROM saga_step
WHERE
  saga_step.saga_id = %(saga_id)s::VARCHAR
  AND saga_step.idx = %(idx)s::INTEGER
