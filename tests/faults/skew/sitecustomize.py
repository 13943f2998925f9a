"""Fallback clock skew for a fault-suite worker when libfaketime is not installed.

Imported at interpreter start (this folder is put first on the worker's PYTHONPATH) when
``SAGAS_FT_SKEW`` is set (``+1h``, ``-30m``, ``+90s``): moves ``time.time``/``time.time_ns`` and
``datetime.now``/``utcnow``/``today`` by that much, which is what Celery and sagas read.
"""

from __future__ import annotations

import datetime as _dt
import os
import time as _time

_spec = os.environ.get("SAGAS_FT_SKEW", "")
if _spec:
    _units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    _offset = float(_spec[:-1]) * _units[_spec[-1]] if _spec[-1] in _units else float(_spec)
    _real_time, _real_time_ns = _time.time, _time.time_ns
    _time.time = lambda: _real_time() + _offset  # type: ignore[assignment]
    _time.time_ns = lambda: _real_time_ns() + int(_offset * 1e9)  # type: ignore[assignment]
    _delta = _dt.timedelta(seconds=_offset)
    _base = _dt.datetime

    class _SkewedDatetime(_base):  # type: ignore[misc,valid-type]
        @classmethod
        def now(cls, tz=None):  # type: ignore[no-untyped-def]
            return _base.now(tz) + _delta

        @classmethod
        def utcnow(cls):  # type: ignore[no-untyped-def]
            return _base.now(_dt.UTC).replace(tzinfo=None) + _delta

        @classmethod
        def today(cls):  # type: ignore[no-untyped-def]
            return cls.now()

    _dt.datetime = _SkewedDatetime  # type: ignore[misc]
