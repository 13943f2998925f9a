"""Choreographed sagas: ``definition`` (declared, checked, inert), ``tracker`` (the pure rules
that derive a saga's state from the events seen) and ``runner`` (handlers run by the service
workers, outcomes recorded in the saga tables, events published through ``sagas.transport``)."""

from __future__ import annotations

from .definition import Choreography, Handler, HandlerSpec, get_choreography

__all__ = ["Choreography", "Handler", "HandlerSpec", "get_choreography"]
