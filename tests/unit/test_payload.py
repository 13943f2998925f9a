"""Input checks: payloads, JSON values and saga ids are rejected with a typed error naming the
offending field, before anything is written.

Tuples: a raw ``dict`` payload must hold JSON types only, so a tuple is rejected
(``PayloadNotJSON``) rather than silently turned into a list — the stored payload would not be
what the caller passed. A pydantic *model instance* with a tuple field is fine: the model dumps
it as a list in JSON mode, and that is what its own schema says it accepts.
"""

from __future__ import annotations

import json
from datetime import date
from typing import Any

import pytest
from pydantic import BaseModel, model_validator

from sagas.errors import (
    InvalidSagaId,
    PayloadInvalid,
    PayloadNotJSON,
    PayloadTooLarge,
    SagaInputError,
)
from sagas.payload import check_json, check_saga_id, encode, validate_payload


class Line(BaseModel):
    sku: str
    qty: int


class Order(BaseModel):
    order_id: str
    qty: int
    price: float = 0.0
    note: str = ""
    lines: list[Line] = []
    tags: dict[str, Any] = {}
    due: date | None = None


class Pair(BaseModel):
    pair: tuple[int, int]


class Picky(BaseModel):
    a: int
    b: int

    @model_validator(mode="after")
    def different(self) -> Picky:
        if self.a == self.b:
            raise ValueError("a and b must differ")
        return self


def validate(payload: Any, *, model: type[BaseModel] = Order, **limits: int) -> dict[str, Any]:
    return validate_payload(
        model,
        payload,
        saga="order_saga",
        max_bytes=limits.get("max_bytes", 64 * 1024),
        max_depth=limits.get("max_depth", 32),
    )


def reject(error: type[SagaInputError], payload: Any, **kwargs: Any) -> SagaInputError:
    with pytest.raises(error) as exc:
        validate(payload, **kwargs)
    assert exc.value.saga in ("order_saga", None)
    return exc.value


GOOD = {"order_id": "o-1", "qty": 2}


# -- valid payloads -----------------------------------------------------------------------------


def test_valid_payload_round_trips_to_canonical_json() -> None:
    payload = {
        "qty": 3,
        "order_id": "o-\u00e9\u2603\U0001d11e",
        "lines": [{"sku": "A", "qty": 1}],
        "tags": {"z": [1, 2.5, None, True], "a": {"nested": "yes"}},
        "due": "2030-01-31",
    }
    data = validate(payload)
    assert data == {
        "order_id": "o-\u00e9\u2603\U0001d11e",
        "qty": 3,
        "price": 0.0,
        "note": "",
        "lines": [{"sku": "A", "qty": 1}],
        "tags": {"z": [1, 2.5, None, True], "a": {"nested": "yes"}},
        "due": "2030-01-31",
    }
    raw = encode(data)
    assert raw == json.dumps(data, separators=(",", ":"), sort_keys=True)
    assert json.loads(raw) == data
    assert validate(json.loads(raw)) == data  # idempotent
    assert encode(validate(dict(reversed(list(payload.items()))))) == raw  # key order irrelevant


def test_model_instances_are_accepted_and_dumped() -> None:
    data = validate(Order(order_id="o", qty=1, due=date(2030, 1, 2)))
    assert data["due"] == "2030-01-02" and data["qty"] == 1


def test_a_model_instance_may_carry_tuples_a_dict_may_not() -> None:
    assert validate(Pair(pair=(1, 2)), model=Pair) == {"pair": [1, 2]}
    assert validate({"pair": [1, 2]}, model=Pair) == {"pair": [1, 2]}
    err = reject(PayloadNotJSON, {"pair": (1, 2)}, model=Pair)
    assert err.field == "payload.pair"


def test_extra_fields_follow_the_model() -> None:
    assert "extra" not in validate({**GOOD, "extra": 1})


def test_large_but_printable_ints_are_fine() -> None:
    data = validate({**GOOD, "tags": {"big": 10**30}})
    assert data["tags"]["big"] == 10**30


# -- model validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"qty": 1}, "payload.order_id"),
        ({"order_id": "o"}, "payload.qty"),
        ({"order_id": "o", "qty": "1"}, "payload.qty"),
        ({"order_id": "o", "qty": True}, "payload.qty"),
        ({"order_id": "o", "qty": 1.5}, "payload.qty"),
        ({"order_id": 7, "qty": 1}, "payload.order_id"),
        ({"order_id": "o", "qty": 1, "lines": [{"sku": "A"}]}, "payload.lines.0.qty"),
        ({"order_id": "o", "qty": 1, "due": "not a date"}, "payload.due"),
    ],
)
def test_invalid_payloads_name_the_field(payload: dict[str, Any], field: str) -> None:
    err = reject(PayloadInvalid, payload)
    assert err.field == field
    assert err.saga == "order_saga"
    assert field.removeprefix("payload.") in str(err)


def test_a_model_level_error_names_the_payload_itself() -> None:
    err = reject(PayloadInvalid, {"a": 1, "b": 1}, model=Picky)
    assert err.field == "payload"
    assert "must differ" in str(err)


def test_a_model_instance_of_another_class_is_rejected() -> None:
    err = reject(PayloadInvalid, Line(sku="A", qty=1))
    assert err.field == "payload" and "Order" in str(err)


@pytest.mark.parametrize("payload", [[GOOD], "o-1", None, 42, b"{}", (("order_id", "o"),)])
def test_payload_must_be_an_object(payload: Any) -> None:
    err = reject(PayloadInvalid, payload)
    assert err.field == "payload"
    assert "JSON object" in str(err)


# -- values JSON cannot carry ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tags", "field"),
    [
        ({"x": float("nan")}, "payload.tags.x"),
        ({"x": float("inf")}, "payload.tags.x"),
        ({"x": float("-inf")}, "payload.tags.x"),
        ({"x": b"bytes"}, "payload.tags.x"),
        ({"x": {1, 2}}, "payload.tags.x"),
        ({"x": (1, 2)}, "payload.tags.x"),
        ({"x": [1, ("a",)]}, "payload.tags.x[1]"),
        ({"x": "nul\u0000inside"}, "payload.tags.x"),
        ({"x": "lone \ud800 surrogate"}, "payload.tags.x"),
        ({"x": date(2030, 1, 1)}, "payload.tags.x"),
        ({"x": object()}, "payload.tags.x"),
        ({"x": 10**5000}, "payload.tags.x"),
        ({"nul\u0000key": 1}, "payload.tags"),
        ({"\udc00": 1}, "payload.tags"),
        ({1: "int key"}, "payload.tags"),
        ({None: "none key"}, "payload.tags"),
        ({("t",): "tuple key"}, "payload.tags"),
    ],
)
def test_values_json_cannot_carry_are_rejected(tags: dict[Any, Any], field: str) -> None:
    err = reject(PayloadNotJSON, {**GOOD, "tags": tags})
    assert err.field == field, str(err)
    assert field in str(err)


def test_nan_in_a_float_field_is_rejected_before_the_model() -> None:
    err = reject(PayloadNotJSON, {**GOOD, "price": float("nan")})
    assert err.field == "payload.price"


def test_nul_in_a_top_level_key_names_the_payload() -> None:
    err = reject(PayloadNotJSON, {**GOOD, "bad\u0000": 1})
    assert err.field == "payload"


def test_check_json_uses_the_given_field_name() -> None:
    with pytest.raises(PayloadNotJSON) as exc:
        check_json({"a": [{"b": float("nan")}]}, field="result")
    assert exc.value.field == "result.a[0].b"
    check_json({"a": [1, "x", None, True, 1.5, {"b": []}]}, field="result")  # no error


# -- size and depth -----------------------------------------------------------------------------


def test_payload_over_the_size_limit_is_rejected() -> None:
    payload = {**GOOD, "note": "x" * 200}
    size = len(encode(payload).encode())
    assert validate(payload, max_bytes=size)["note"] == "x" * 200  # exactly at the limit
    err = reject(PayloadTooLarge, payload, max_bytes=size - 1)
    assert err.field == "payload"
    assert str(size) in str(err) and str(size - 1) in str(err)


def nested(levels: int, leaf: Any = 1) -> Any:
    value = leaf
    for _ in range(levels):
        value = {"d": value}
    return value


def test_nesting_at_the_limit_is_accepted_and_one_deeper_is_not() -> None:
    # The payload itself is depth 0, "tags" depth 1, so the leaf of nested(n) sits at n + 1.
    validate({**GOOD, "tags": nested(4)}, max_depth=5)
    err = reject(PayloadNotJSON, {**GOOD, "tags": nested(5)}, max_depth=5)
    assert err.field is not None and err.field.startswith("payload.tags.d.d.d.d")
    assert "deeper than 5" in str(err)


@pytest.mark.parametrize("container", ["dict", "list"])
def test_hostile_nesting_never_raises_recursion_error(container: str) -> None:
    value: Any = 0
    for _ in range(100_000):
        value = {"d": value} if container == "dict" else [value]
    err = reject(PayloadNotJSON, {**GOOD, "tags": {"deep": value}})
    assert "nested deeper than 32" in str(err)
    with pytest.raises(PayloadNotJSON):
        check_json(value)


# -- saga ids -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "saga_id",
    ["a", "0", "order-1", "ORD_1.2:3-x", "a" * 128, "550e8400-e29b-41d4-a716-446655440000"],
)
def test_good_saga_ids(saga_id: str) -> None:
    assert check_saga_id(saga_id) == saga_id


@pytest.mark.parametrize(
    "saga_id",
    [
        "",
        "a" * 129,
        "has space",
        "line\nbreak",
        "trailing\n",
        "tab\t",
        "caf\u00e9",
        "\u0661\u0662",  # Arabic-Indic digits are digits to str.isdigit, not to us
        "-leading-dash",
        ".leading-dot",
        "_leading",
        "a/b",
        "a\u0000",
        None,
        42,
        b"bytes",
    ],
)
def test_malformed_saga_ids_are_rejected(saga_id: Any) -> None:
    with pytest.raises(InvalidSagaId) as exc:
        check_saga_id(saga_id)
    assert exc.value.field == "saga_id"


def test_saga_id_errors_name_the_given_field_and_stay_short() -> None:
    with pytest.raises(InvalidSagaId) as exc:
        check_saga_id("x " * 500, field="correlation_id")
    assert exc.value.field == "correlation_id"
    assert "correlation_id" in str(exc.value)
    assert len(str(exc.value)) < 300  # the bad value is truncated in the message


def test_input_errors_are_value_errors() -> None:
    # Callers (web views) can catch one familiar base class.
    for cls in (PayloadInvalid, PayloadNotJSON, PayloadTooLarge, InvalidSagaId):
        assert issubclass(cls, SagaInputError) and issubclass(cls, ValueError)
