"""The loan approval example: a credit check, a hold on the funds, then a wait of up to two
days for a loan officer's signal; the disbursement is the pivot (money moved: no way back), and
the customer is notified after it.

- approved in time: the funds are disbursed and the customer notified;
- no decision in two days: the hold is released (the wait times out and the saga compensates);
- a signal may come before the saga reaches the wait (an officer who decided early): it is
  kept and taken when the wait begins.
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel, Field

from sagas import Park, PermanentError, RetryPolicy, Saga, StepContext


class Loan(BaseModel):
    loan_id: str
    applicant: str
    amount_cents: int = Field(gt=0)
    credit_score: int = 700


class Decision(BaseModel):
    officer: str
    note: str = ""


LEDGER: dict[str, str] = {}  # loan id -> what the bank's ledger holds for it (the example's)

loan_approval = Saga("loan_approval", payload=Loan, deadline=timedelta(days=7))


def release_hold(ctx: StepContext[Loan]) -> None:
    LEDGER.pop(ctx.payload.loan_id, None)  # idempotent: releasing twice releases once


@loan_approval.step(queue="loans", compensation=None)
def check_credit(ctx: StepContext[Loan]) -> dict[str, int]:
    if ctx.payload.credit_score < 500:
        raise PermanentError(f"credit score {ctx.payload.credit_score} is below 500")
    return {"score": ctx.payload.credit_score}


@loan_approval.step(queue="loans", compensation=release_hold)
def hold_funds(ctx: StepContext[Loan]) -> dict[str, str]:
    LEDGER[ctx.payload.loan_id] = "held"
    return {"hold": f"hold-{ctx.idempotency_key[:8]}"}


loan_approval.wait_for("officer_decision", model=Decision, timeout=timedelta(days=2))


@loan_approval.step(queue="loans", compensation=release_hold, pivot=True)
def disburse(ctx: StepContext[Loan]) -> dict[str, str]:
    LEDGER[ctx.payload.loan_id] = "disbursed"
    return {"approved_by": ctx.results["officer_decision"]["officer"]}


@loan_approval.step(
    queue="loans",
    compensation=None,
    retry=RetryPolicy(max_attempts=5, initial=60, backoff=2, max_interval=3600),
    on_exhausted=Park("the customer could not be notified: call them"),
)
def notify_applicant(ctx: StepContext[Loan]) -> dict[str, str]:
    return {"sent_to": ctx.payload.applicant}
