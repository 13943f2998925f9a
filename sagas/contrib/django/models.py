"""Read-only Django models over the saga store's tables (``managed = False``).

The tables belong to the saga store's own Alembic migrations (``manage.py saga db upgrade``),
not to Django's: Django never creates, alters or drops them, and nothing here writes to them
(the admin is read-only; operator actions go through ``sagas.coordinator``). The columns mirror
``sagas/store/schema.py``.
"""

from __future__ import annotations

from django.db import models

from ...state import SagaState, StepState

SAGA_STATES = [(s.value, s.value) for s in SagaState]
STEP_STATES = [(s.value, s.value) for s in StepState]


class Saga(models.Model):  # type: ignore[misc]  # Django is untyped
    id = models.CharField(primary_key=True, max_length=128)
    name = models.CharField(max_length=64)
    kind = models.CharField(max_length=16)
    version = models.IntegerField()
    state = models.CharField(max_length=16, choices=SAGA_STATES)
    payload = models.JSONField()
    payload_hash = models.CharField(max_length=64)
    correlation_id = models.CharField(max_length=128)
    failure = models.JSONField(null=True)
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True)
    deadline_at = models.DateTimeField(null=True)
    wake_at = models.DateTimeField(null=True)
    outbox = models.JSONField(null=True)
    outbox_at = models.DateTimeField(null=True)
    parked = models.BooleanField()
    lock_version = models.IntegerField()

    class Meta:
        managed = False
        db_table = "saga"
        ordering = ("-created_at",)
        verbose_name = "saga"
        permissions = [("operate_saga", "Can retry and cancel sagas")]

    def __str__(self) -> str:
        return f"{self.name} {self.id}"


class SagaStep(models.Model):  # type: ignore[misc]
    pk = models.CompositePrimaryKey("saga", "idx")
    saga = models.ForeignKey(
        Saga, on_delete=models.DO_NOTHING, db_column="saga_id", related_name="steps"
    )
    idx = models.IntegerField()
    name = models.CharField(max_length=64)
    state = models.CharField(max_length=24, choices=STEP_STATES)
    attempt = models.IntegerField()
    compensation_attempt = models.IntegerField()
    result = models.JSONField(null=True)
    error = models.JSONField(null=True)
    started_at = models.DateTimeField(null=True)
    finished_at = models.DateTimeField(null=True)
    deadline_at = models.DateTimeField(null=True)
    next_attempt_at = models.DateTimeField(null=True)
    in_doubt = models.BooleanField()

    class Meta:
        managed = False
        db_table = "saga_step"
        ordering = ("saga_id", "idx")
        verbose_name = "saga step"

    def __str__(self) -> str:
        return f"{self.saga_id} #{self.idx + 1} {self.name}"


class SagaHistory(models.Model):  # type: ignore[misc]
    """A row of a saga's append-only history (table ``saga_event``)."""

    id = models.BigIntegerField(primary_key=True)
    saga = models.ForeignKey(
        Saga, on_delete=models.DO_NOTHING, db_column="saga_id", related_name="history"
    )
    at = models.DateTimeField()
    kind = models.CharField(max_length=32)
    step = models.CharField(max_length=64, null=True)
    attempt = models.IntegerField(null=True)
    detail = models.JSONField(null=True)
    message = models.TextField(null=True)

    class Meta:
        managed = False
        db_table = "saga_event"
        ordering = ("saga_id", "id")
        verbose_name = "saga history record"

    def __str__(self) -> str:
        return f"{self.saga_id} {self.kind}"
