"""Choreography definitions are checked when declared, with messages naming the culprit."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from pydantic import BaseModel

from sagas import DefinitionError
from sagas.choreography import Choreography, Handler


class P(BaseModel):
    n: int = 0


def fn(ctx: Any) -> None:
    return None


def undo(ctx: Any) -> None:
    return None


def name() -> str:
    return f"c_{uuid.uuid4().hex[:10]}"


def chain(**overrides: Any) -> list[Handler]:
    first = dict(
        name="a",
        service="svc_a",
        on="x.started",
        emits="a.done",
        fails_with="a.failed",
        fn=fn,
        compensation=undo,
        compensate_on=("b.failed",),
    )
    first.update(overrides.pop("a", {}))
    second = dict(
        name="b",
        service="svc_b",
        on="a.done",
        emits="x.done",
        fails_with="b.failed",
        fn=fn,
        compensation=None,
    )
    second.update(overrides.pop("b", {}))
    return [Handler(**first), Handler(**second)]  # type: ignore[arg-type]


def declare(handlers: list[Handler], **kw: Any) -> Choreography[P]:
    args: dict[str, Any] = {"payload": P, "starts_on": "x.started", "completes_on": "x.done"}
    args.update(kw)
    return Choreography(name(), handlers=handlers, **args)


def test_a_valid_chain_is_ordered_by_events_not_by_list_order() -> None:
    c = declare(list(reversed(chain())))
    assert [h.name for h in c.handlers] == ["a", "b"]
    assert c.subscriptions() == {
        "svc_a": {"x.started", "b.failed", "sagas.compensated"},
        "svc_b": {"a.done"},
    }


def test_completion_event_nobody_emits() -> None:
    with pytest.raises(DefinitionError, match="completes_on 'x.finished' is never emitted"):
        declare(chain(), completes_on="x.finished")


def test_handler_on_an_event_nobody_emits() -> None:
    with pytest.raises(DefinitionError, match=r"'b' \(on 'a.finished'\)"):
        declare(chain(b={"on": "a.finished"}))


def test_compensate_on_an_event_nobody_emits() -> None:
    with pytest.raises(
        DefinitionError, match="handler 'a': compensate_on 'z.failed' is an event nobody emits"
    ):
        declare(chain(a={"compensate_on": ("b.failed", "z.failed")}))


def test_handler_needing_a_compensation_without_one() -> None:
    from sagas.definition import REQUIRED

    with pytest.raises(DefinitionError, match="handler 'a': later handlers can fail"):
        declare(chain(a={"compensation": REQUIRED, "compensate_on": ()}))


def test_compensation_that_ignores_a_later_failure() -> None:
    with pytest.raises(DefinitionError, match="does not react to the later failure event"):
        declare(chain(a={"compensate_on": ()}))


def test_compensation_on_its_own_or_an_earlier_failure_is_rejected() -> None:
    with pytest.raises(DefinitionError, match="'a.failed' is not a failure of a later handler"):
        declare(chain(a={"compensate_on": ("b.failed", "a.failed")}))


@pytest.mark.parametrize(
    "override, message",
    [
        ({"b": {"name": "a"}}, "duplicate handler name"),
        ({"b": {"on": "x.started"}}, "already handled by 'a'"),
        ({"a": {"timeout": 0}}, "timeout must be positive"),
        ({"a": {"service": "bad queue"}}, "not a valid queue name"),
        ({"a": {"emits": "Not An Event"}}, "is not an event name"),
        ({"b": {"fails_with": None, "fail_on_timeout": True}}, "fail_on_timeout needs fails_with"),
    ],
)
def test_other_bad_declarations(override: dict[str, Any], message: str) -> None:
    with pytest.raises(DefinitionError, match=message):
        declare(chain(**override))


def test_reserved_event_name() -> None:
    with pytest.raises(DefinitionError, match="reserved"):
        declare(chain(), starts_on="sagas.compensated")
