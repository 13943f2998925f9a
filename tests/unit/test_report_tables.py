"""The CLI's tables in a narrow terminal: optional columns go first, then long names are cut
with ``~``; ids are never cut, and no line is wider than the terminal while that is possible."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from sagas import report
from sagas.state import SagaState

T0 = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)


def rows() -> list[SimpleNamespace]:
    return [
        SimpleNamespace(
            id=f"order-{i:04d}-7f3a9c",
            name="order_fulfillment_with_a_long_name",
            state=SagaState.FAILED if i else SagaState.COMPLETED,
            parked=bool(i == 2),
            correlation_id=f"req-{i}-0123456789abcdef",
            created_at=T0,
            updated_at=T0 + timedelta(seconds=3),
            finished_at=T0 + timedelta(seconds=3),
        )
        for i in range(3)
    ]


def test_a_wide_terminal_shows_every_column_whole() -> None:
    lines = report.table(
        ["ID", "NAME", "CORRELATION"],
        [[r.id, r.name, r.correlation_id] for r in rows()],
        optional=(2,),
        shrink=(1,),
        width=200,
    ).splitlines()
    assert lines[0].split() == ["ID", "NAME", "CORRELATION"]
    assert "order_fulfillment_with_a_long_name" in lines[2] and "req-0-0123456789abcdef" in lines[2]


def test_a_narrow_terminal_drops_optional_columns_then_cuts_names_never_ids() -> None:
    def shown(width: int) -> str:
        return report.table(
            ["ID", "NAME", "STATE", "CORRELATION"],
            [[r.id, r.name, r.state.value, r.correlation_id] for r in rows()],
            optional=(3,),
            shrink=(1,),
            width=width,
        )

    for width in (80, 60, 50, 40):
        text = shown(width)
        assert all(len(line) <= width for line in text.splitlines()), (width, text)
        assert all(r.id in text for r in rows())  # ids whole at every width
        assert "CORRELATION" not in text.splitlines()[0]  # the optional column went first
    assert "order_fulfillment_with_a_long_name" in shown(80)  # then it fits whole
    assert "order_fulfillment_with_a_long_name" not in shown(50) and "~" in shown(50)


def test_saga_list_fits_a_60_column_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    size = os.terminal_size((60, 24))
    monkeypatch.setattr(report.shutil, "get_terminal_size", lambda fallback=(80, 24): size)
    text = report.saga_list(rows())  # type: ignore[arg-type]
    lines = text.splitlines()
    assert all(len(line) <= 60 for line in lines), text
    assert lines[0].split() == ["ID", "NAME", "STATE"]
    assert "failed (parked)" in text and all(r.id in text for r in rows())


def test_saga_list_keeps_the_creation_time_where_it_fits(monkeypatch: pytest.MonkeyPatch) -> None:
    size = os.terminal_size((100, 24))
    monkeypatch.setattr(report.shutil, "get_terminal_size", lambda fallback=(80, 24): size)
    text = report.saga_list(rows())  # type: ignore[arg-type]
    assert text.splitlines()[0].split()[:4] == ["ID", "NAME", "STATE", "CREATED"]
    assert all(len(line) <= 100 for line in text.splitlines()), text
