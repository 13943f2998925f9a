"""Bad saga definitions fail at declaration, with a message naming the saga and the step."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from sagas import Action, DefinitionError, RetryPolicy, Saga, get_saga
from sagas.definition import StepContext
from sagas.errors import UnknownSaga


class Order(BaseModel):
    order_id: str
    qty: int


def unique(prefix: str = "defn") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def new_saga(**kwargs: Any) -> Saga[Order]:
    return Saga(unique(), payload=Order, **kwargs)


def undo(ctx: StepContext[Order]) -> None:
    return None


def assert_names(exc: pytest.ExceptionInfo[DefinitionError], saga: Saga[Any], step: str) -> None:
    message = str(exc.value)
    assert repr(saga.name) in message, message
    assert repr(step) in message, message


# -- a good definition, for contrast --------------------------------------------------------------


def test_a_valid_definition_builds_its_plan() -> None:
    saga = new_saga(deadline=timedelta(minutes=5))

    @saga.step(queue="inventory", timeout=timedelta(seconds=30), compensation=undo)
    def reserve(ctx: StepContext[Order]) -> dict[str, int]:
        return {"reserved": ctx.payload.qty}

    saga.remote_step(
        "charge",
        task="payments.charge",
        queue="payments",
        compensation="payments.refund",
        compensation_queue="payments.undo",
        compensation_timeout=7,
    )
    saga.remote_step("notify", task="notify.send", queue="notify", compensation=None)

    plan = saga.plan
    assert [s.name for s in plan.steps] == ["reserve", "charge", "notify"]
    assert [s.compensable for s in plan.steps] == [True, True, False]
    assert [s.timeout for s in plan.steps] == [30.0, 30.0, 30.0]
    assert [s.compensation_timeout for s in plan.steps] == [30.0, 7.0, 30.0]
    assert saga.deadline == 300.0
    charge = saga.step_def("charge")
    assert charge.queue_for(Action.FORWARD) == "payments"
    assert charge.queue_for(Action.COMPENSATE) == "payments.undo"
    assert charge.task_name(Action.COMPENSATE) == "payments.refund"
    assert saga.step_def("reserve").task_name(Action.FORWARD) == f"saga.{saga.name}.reserve"
    assert saga.step_def("reserve").compensation_queue == "inventory"
    assert get_saga(saga.name) is saga
    assert reserve.__name__ == "reserve"  # the decorator returns the function


# -- saga-level checks ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["", "1abc", "a-b", "a b", "a.b", "a" * 65, "caf\u00e9", "x\n", None, 5]
)
def test_bad_saga_names_are_rejected(name: Any) -> None:
    with pytest.raises(DefinitionError, match="saga name"):
        Saga(name, payload=Order)


def test_longest_saga_name_is_accepted() -> None:
    name = "a" + uuid.uuid4().hex[:16] + "b" * 47
    assert len(name) == 64
    assert Saga(name, payload=Order).name == name


@dataclass
class NotAModel:
    order_id: str


@pytest.mark.parametrize("payload", [dict, NotAModel, Order(order_id="o", qty=1), None, "Order"])
def test_payload_must_be_a_pydantic_model_class(payload: Any) -> None:
    name = unique()
    with pytest.raises(DefinitionError, match="payload must be a pydantic model") as exc:
        Saga(name, payload=payload)
    assert repr(name) in str(exc.value)


@pytest.mark.parametrize("version", [0, -1, True, "1", 1.0])
def test_version_must_be_a_positive_int(version: Any) -> None:
    with pytest.raises(DefinitionError, match="version"):
        new_saga(version=version)


@pytest.mark.parametrize(
    "deadline",
    [
        0,
        -1,
        0.0,
        timedelta(0),
        timedelta(seconds=-5),
        False,
        True,
        "1h",
        float("nan"),
        float("inf"),
    ],
)
def test_bad_saga_deadlines_are_rejected(deadline: Any) -> None:
    # 0 / timedelta(0) / False used to mean "no deadline" silently; None is the way to say that.
    name = unique()
    with pytest.raises(DefinitionError, match="deadline") as exc:
        Saga(name, payload=Order, deadline=deadline)
    assert repr(name) in str(exc.value)


def test_no_deadline_is_spelled_none() -> None:
    assert new_saga(deadline=None).deadline is None


def test_a_saga_with_no_steps_fails_when_first_used() -> None:
    saga = new_saga()
    with pytest.raises(DefinitionError, match="has no steps") as exc:
        _ = saga.plan
    assert repr(saga.name) in str(exc.value)


def test_the_same_saga_name_cannot_be_defined_twice() -> None:
    saga = new_saga()
    with pytest.raises(DefinitionError, match="defined twice") as exc:
        Saga(saga.name, payload=Order)
    assert repr(saga.name) in str(exc.value)
    assert get_saga(saga.name) is saga


def test_unregistered_sagas_are_not_in_the_registry() -> None:
    saga = Saga(unique(), payload=Order, register=False)
    with pytest.raises(UnknownSaga) as exc:
        get_saga(saga.name)
    assert exc.value.field == "name"


def test_steps_cannot_be_added_after_first_use() -> None:
    saga = new_saga()
    saga.remote_step("a", task="t.a", queue="q", compensation=None)
    _ = saga.plan
    with pytest.raises(DefinitionError, match="after the saga was first used") as exc:
        saga.remote_step("b", task="t.b", queue="q", compensation=None)
    assert_names(exc, saga, "b")
    assert [s.name for s in saga.plan.steps] == ["a"]


# -- step-level checks ----------------------------------------------------------------------------


def test_duplicate_local_step_names_are_rejected() -> None:
    saga = new_saga()

    @saga.step(queue="q", compensation=None)
    def reserve(ctx: StepContext[Order]) -> None:
        return None

    with pytest.raises(DefinitionError, match="duplicate step name") as exc:

        @saga.step(queue="q", compensation=None, name="reserve")
        def reserve_again(ctx: StepContext[Order]) -> None:
            return None

    assert_names(exc, saga, "reserve")
    assert len(saga.steps) == 1


def test_duplicate_remote_step_names_are_rejected() -> None:
    saga = new_saga()
    saga.remote_step("charge", task="payments.charge", queue="payments", compensation=None)
    with pytest.raises(DefinitionError, match="duplicate step name") as exc:
        saga.remote_step("charge", task="payments.other", queue="payments", compensation=None)
    assert_names(exc, saga, "charge")


BAD_TIMEOUTS = [
    0,
    0.0,
    -1,
    -0.5,
    timedelta(0),
    timedelta(seconds=-1),
    True,
    False,
    "30",
    float("nan"),
    float("inf"),
]


# compensation_timeout=None means "the step's timeout", so None is only bad for timeout.
@pytest.mark.parametrize(
    ("which", "timeout"),
    [("timeout", t) for t in [*BAD_TIMEOUTS, None]]
    + [("compensation_timeout", t) for t in BAD_TIMEOUTS],
)
def test_bad_timeouts_are_rejected(which: str, timeout: Any) -> None:
    saga = new_saga()
    with pytest.raises(DefinitionError, match=which) as exc:
        saga.remote_step(
            "pay", task="payments.charge", queue="q", compensation=None, **{which: timeout}
        )
    assert_names(exc, saga, "pay")
    assert saga.steps == []


def test_bad_timeout_on_a_local_step_names_it() -> None:
    saga = new_saga()
    with pytest.raises(DefinitionError, match="timeout") as exc:

        @saga.step(queue="q", timeout=0, compensation=None)
        def ship(ctx: StepContext[Order]) -> None:
            return None

    assert_names(exc, saga, "ship")


def test_a_local_step_must_say_whether_it_needs_a_compensation() -> None:
    saga = new_saga()
    with pytest.raises(DefinitionError, match=r"compensation=None") as exc:

        @saga.step(queue="q")
        def reserve(ctx: StepContext[Order]) -> None:
            return None

    assert_names(exc, saga, "reserve")

    @saga.step(queue="q", compensation=None)
    def reserve_ok(ctx: StepContext[Order]) -> None:
        return None

    assert saga.plan.steps[0].compensable is False


def test_a_remote_step_must_say_whether_it_needs_a_compensation() -> None:
    saga = new_saga()
    with pytest.raises(DefinitionError, match=r"compensation=None") as exc:
        saga.remote_step("charge", task="payments.charge", queue="payments")
    assert_names(exc, saga, "charge")


def test_a_local_compensation_must_be_callable() -> None:
    saga = new_saga()
    with pytest.raises(DefinitionError, match="compensation must be a function") as exc:

        @saga.step(queue="q", compensation="payments.refund")  # type: ignore[arg-type]
        def charge(ctx: StepContext[Order]) -> None:
            return None

    assert_names(exc, saga, "charge")


@pytest.mark.parametrize("task", ["", "has space", "a/b", "x" * 201, None, 42])
def test_remote_task_names_must_be_celery_task_names(task: Any) -> None:
    saga = new_saga()
    with pytest.raises(DefinitionError) as exc:
        saga.remote_step("charge", task=task, queue="q", compensation=None)
    assert_names(exc, saga, "charge")


def test_remote_compensation_must_be_a_task_name() -> None:
    saga = new_saga()
    with pytest.raises(DefinitionError, match="compensation must be a Celery task name") as exc:
        saga.remote_step("charge", task="p.charge", queue="q", compensation="not a task!")
    assert_names(exc, saga, "charge")


@pytest.mark.parametrize("name", ["", "1st", "has-dash", "a" * 65, "caf\u00e9"])
def test_bad_step_names_are_rejected(name: str) -> None:
    saga = new_saga()
    with pytest.raises(DefinitionError, match="step name must match") as exc:
        saga.remote_step(name, task="p.charge", queue="q", compensation=None)
    assert repr(saga.name) in str(exc.value)


BAD_QUEUES = ["", "has space", "q/1", "x" * 129, "caf\u00e9", 5]


# compensation_queue=None means "the step's queue", so None is only bad for queue.
@pytest.mark.parametrize(
    ("which", "queue"),
    [("queue", q) for q in [*BAD_QUEUES, None]] + [("compensation_queue", q) for q in BAD_QUEUES],
)
def test_bad_queue_names_are_rejected(which: str, queue: Any) -> None:
    saga = new_saga()
    kwargs: dict[str, Any] = {"queue": "payments", which: queue}
    with pytest.raises(DefinitionError, match="not a valid queue name") as exc:
        saga.remote_step("charge", task="p.charge", compensation="p.refund", **kwargs)
    assert_names(exc, saga, "charge")


def test_good_queue_names_are_accepted() -> None:
    saga = new_saga()
    for i, queue in enumerate(["payments", "svc.payments:high-1", "x" * 128]):
        saga.remote_step(f"s{i}", task="p.t", queue=queue, compensation=None)
    assert [s.queue for s in saga.steps] == ["payments", "svc.payments:high-1", "x" * 128]


# -- retry policies -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"max_attempts": 0}, "max_attempts must be >= 1"),
        ({"max_attempts": -3}, "max_attempts must be >= 1"),
        ({"max_attempts": True}, "max_attempts must be an int"),
        ({"max_attempts": 2.5}, "max_attempts must be an int"),
        ({"initial": 0}, "initial must be > 0"),
        ({"initial": -1.0}, "initial must be > 0"),
        ({"initial": float("nan")}, "initial must be finite"),
        ({"initial": "1"}, "initial must be a number"),
        ({"backoff": 0.5}, "backoff must be >= 1"),
        ({"backoff": float("inf")}, "backoff must be finite"),
        ({"max_interval": 0.5, "initial": 1.0}, "max_interval must be >= initial"),
        ({"max_interval": float("inf")}, "max_interval must be finite"),
        ({"jitter": 1.0}, "jitter must be in [0, 1)"),
        ({"jitter": -0.1}, "jitter must be in [0, 1)"),
        ({"jitter": float("nan")}, "jitter must be finite"),
        ({"non_retryable": "OutOfStock"}, "non_retryable must be a list"),
        ({"non_retryable": ValueError}, "non_retryable must be a list"),
        ({"non_retryable": (42,)}, "non_retryable entries must be exception classes"),
    ],
)
def test_bad_retry_policies_are_rejected(kwargs: dict[str, Any], problem: str) -> None:
    with pytest.raises(DefinitionError) as exc:
        RetryPolicy(**kwargs)
    assert problem in str(exc.value)


def test_every_problem_of_a_retry_policy_is_reported_at_once() -> None:
    with pytest.raises(DefinitionError) as exc:
        RetryPolicy(max_attempts=0, backoff=0.1, jitter=2)
    message = str(exc.value)
    for problem in ("max_attempts", "backoff", "jitter"):
        assert problem in message


@pytest.mark.parametrize("which", ["retry", "compensation_retry"])
@pytest.mark.parametrize("policy", [3, {"max_attempts": 3}, None])
def test_step_retry_must_be_a_retry_policy(which: str, policy: Any) -> None:
    saga = new_saga()
    with pytest.raises(DefinitionError, match="RetryPolicy instances") as exc:
        saga.remote_step("charge", task="p.charge", queue="q", compensation=None, **{which: policy})
    assert_names(exc, saga, "charge")


def test_non_retryable_accepts_classes_and_names() -> None:
    class OutOfStock(Exception):
        pass

    policy = RetryPolicy.build(non_retryable=[OutOfStock, "CardDeclined"])
    assert policy.non_retryable == ("OutOfStock", "CardDeclined")
    assert RetryPolicy(non_retryable=[OutOfStock]).non_retryable == ("OutOfStock",)
    assert not policy.is_retryable("OutOfStock") and policy.is_retryable("Timeout")
