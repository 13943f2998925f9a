"""The read-only saga admin, with "retry" and "cancel" operator actions.

Nothing can be added, changed or deleted here: the saga store changes only through the engine.
The list filters by state, name, creation date and kind, and searches by exact saga id or
correlation id; a saga's page shows its steps and its history in order. The two actions ask for
a reason on a confirmation page (a CSRF-protected form, as every admin POST), then call
``sagas.coordinator.retry`` / ``cancel`` for each selected saga with the project's runtime
(``sagas.contrib.django.conf.runtime()``), recording the reason and ``by="<user> (admin)"`` in
the saga's history, and report each saga's outcome as a message. They need the permission
``sagas.operate_saga`` (superusers have it).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db.models import Q
from django.template import engines
from django.template.backends.django import DjangoTemplates
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from ... import coordinator
from ...errors import SagaError
from ...machine import Decision
from ...runtime import Runtime
from .conf import dashboard_url, runtime
from .models import Saga, SagaHistory, SagaStep

Operation = Callable[..., Decision]

CONFIRM_TEMPLATE = """{% extends "admin/base_site.html" %}
{% block breadcrumbs %}<div class="breadcrumbs">
<a href="{% url 'admin:index' %}">Home</a>
&rsaquo; <a href="{% url 'admin:app_list' app_label=opts.app_label %}">{{ opts.app_config.verbose_name }}</a>
&rsaquo; <a href="{{ changelist_url }}">{{ opts.verbose_name_plural|capfirst }}</a>
&rsaquo; {{ title }}</div>{% endblock %}
{% block content %}
<p>{{ question }}</p>
<ul>{% for saga in sagas %}<li>{{ saga.id }}: {{ saga.name }} ({{ saga.state }})</li>{% endfor %}</ul>
<form method="post">{% csrf_token %}
{{ form.as_p }}
{% for saga in sagas %}<input type="hidden" name="{{ checkbox_name }}" value="{{ saga.pk }}">
{% endfor %}<input type="hidden" name="action" value="{{ action }}">
<input type="hidden" name="confirm" value="yes">
<input type="submit" value="{{ title }}">
<a href="{{ changelist_url }}" class="button cancel-link">Back</a>
</form>
{% endblock %}
"""


class ReasonForm(forms.Form):  # type: ignore[misc]  # Django is untyped
    reason = forms.CharField(
        max_length=500,
        widget=forms.TextInput(attrs={"size": 80}),
        help_text="Recorded in each saga's history, with your user name.",
    )


def _when(value: datetime | None) -> str:
    if value is None:
        return "-"
    if timezone.is_aware(value):
        value = timezone.localtime(value)
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _json(value: Any, limit: int = 200) -> str:
    if value is None:
        return ""
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _error(value: Any) -> str:
    if isinstance(value, dict) and "type" in value:
        return f"{value.get('type')}: {value.get('message', '')}"
    return _json(value)


def _table(headers: list[str], rows: list[list[str]], css: str) -> Any:
    head = format_html_join("", "<th>{}</th>", ((h,) for h in headers))
    body = format_html_join(
        "",
        "<tr>{}</tr>",
        ((format_html_join("", "<td>{}</td>", ((cell,) for cell in row)),) for row in rows),
    )
    return format_html(
        '<table class="{}"><thead><tr>{}</tr></thead><tbody>{}</tbody></table>', css, head, body
    )


def _steps(obj: Saga) -> Any:
    rows = [
        [
            str(s.idx + 1),
            s.name,
            s.state,
            str(s.attempt),
            str(s.compensation_attempt) if s.compensation_attempt else "-",
            _when(s.started_at),
            _when(s.finished_at),
            "yes" if s.in_doubt else "",
            _json(s.result),
            _error(s.error),
        ]
        for s in SagaStep.objects.filter(saga_id=obj.pk).order_by("idx")
    ]
    headers = ["#", "step", "state", "attempts", "undo", "started", "finished", "in doubt"]
    return _table([*headers, "result", "last error"], rows, "saga-steps")


def _history(obj: Saga) -> Any:
    records = list(SagaHistory.objects.filter(saga_id=obj.pk).order_by("id"))
    start = records[0].at if records else obj.created_at
    rows = [
        [
            _when(h.at),
            f"+{(h.at - start).total_seconds():.3f}s",
            h.kind,
            h.step or "",
            "" if h.attempt is None else str(h.attempt),
            _json(h.detail, 300) + (f" {h.message}" if h.message else ""),
        ]
        for h in records
    ]
    return _table(["at", "t", "event", "step", "attempt", "detail"], rows, "saga-history")


class SagaAdmin(admin.ModelAdmin):  # type: ignore[misc]
    list_display = ("id", "name", "state", "parked", "correlation_id", "created_at", "finished_at")
    list_filter = ("state", "name", "created_at", "kind", "parked")
    search_fields = ("=id", "=correlation_id")  # the search box; matched by get_search_results
    search_help_text = "Exact saga id or correlation id."
    show_full_result_count = False
    list_per_page = 50
    actions = ["retry_sagas", "cancel_sagas"]
    confirmation_template: str | None = None  # a template name to replace CONFIRM_TEMPLATE
    fieldsets = [
        (
            None,
            {
                "fields": (
                    ("id", "name", "kind", "version"),
                    ("state", "parked"),
                    "correlation_id",
                    ("created_at", "updated_at", "finished_at", "deadline_at"),
                    "failure_text",
                    "dashboard_link",
                )
            },
        ),
        ("Steps", {"fields": ("steps_table",)}),
        ("History", {"fields": ("history_table",)}),
        ("Payload", {"fields": ("payload_text",)}),
        (
            "Engine internals",
            {
                "fields": ("wake_at", "outbox_at", "outbox", "lock_version", "payload_hash"),
                "classes": ("collapse",),
            },
        ),
    ]
    readonly_fields = (
        "failure_text",
        "steps_table",
        "history_table",
        "payload_text",
        "dashboard_link",
    )

    def changelist_view(self, request: Any, extra_context: dict[str, Any] | None = None) -> Any:
        # The changelist template (templates/admin/sagas/saga/) links to the dashboard.
        context = {**(extra_context or {}), "sagas_dashboard_url": dashboard_url()}
        return super().changelist_view(request, extra_context=context)

    def get_search_results(self, request: Any, queryset: Any, search_term: str) -> Any:
        # Exact matches only (the primary key and ix_saga_correlation_id), not "=" (iexact).
        term = search_term.strip()
        if not term:
            return queryset, False
        return queryset.filter(Q(id=term) | Q(correlation_id=term)), False

    def has_add_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    def has_operate_permission(self, request: Any) -> bool:
        opts = self.model._meta
        return bool(request.user.has_perm(f"{opts.app_label}.operate_saga"))

    # -- the detail page -------------------------------------------------------------------

    def steps_table(self, obj: Saga) -> Any:
        return _steps(obj)

    def history_table(self, obj: Saga) -> Any:
        return _history(obj)

    def failure_text(self, obj: Saga) -> str:
        return _error(obj.failure) if obj.failure else "-"

    def dashboard_link(self, obj: Saga) -> Any:
        base = dashboard_url()
        if base is None:
            return "- (set SAGAS_DASHBOARD_URL to link the saga dashboard)"
        return format_html(
            '<a href="{}sagas/{}" class="sagas-dashboard-link">timeline, diagram and actions</a>',
            base,
            obj.pk,
        )

    def payload_text(self, obj: Saga) -> Any:
        return format_html("<pre>{}</pre>", json.dumps(obj.payload, indent=2, sort_keys=True))

    steps_table = admin.display(description="steps")(steps_table)
    history_table = admin.display(description="history")(history_table)
    failure_text = admin.display(description="failure")(failure_text)
    payload_text = admin.display(description="payload")(payload_text)
    dashboard_link = admin.display(description="dashboard")(dashboard_link)

    # -- operator actions ------------------------------------------------------------------

    def _operate(
        self, request: Any, queryset: Any, operation: Operation, action: str, done: str
    ) -> Any:
        confirmed = "confirm" in request.POST
        form = ReasonForm(request.POST if confirmed else None)
        if not (confirmed and form.is_valid()):
            return self._confirmation(request, queryset, form, action)
        reason = form.cleaned_data["reason"]
        by = f"{request.user.get_username()} (admin)"
        try:
            rt: Runtime = runtime()
        except SagaError as exc:
            messages.error(request, f"{action}: {exc}")
            return None
        for saga in queryset:
            try:
                decision = operation(saga.id, reason, rt=rt, by=by)
            except SagaError as exc:
                messages.error(request, f"saga {saga.id}: {exc}")
            else:
                messages.success(request, f"saga {saga.id}: {done} ({decision.status.state.value})")
        return None

    def _confirmation(self, request: Any, queryset: Any, form: Any, action: str) -> Any:
        opts = self.model._meta
        title = "Retry sagas" if action == "retry_sagas" else "Cancel sagas"
        question = (
            "Re-drive each saga from its open step or its dead-lettered compensation?"
            if action == "retry_sagas"
            else "Stop each saga's forward progress and compensate what it did, newest first?"
        )
        context = {
            **self.admin_site.each_context(request),
            "title": title,
            "question": question,
            "opts": opts,
            "sagas": list(queryset),
            "form": form,
            "action": action,
            "checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "changelist_url": reverse(
                f"admin:{opts.app_label}_{opts.model_name}_changelist",
                current_app=self.admin_site.name,
            ),
        }
        request.current_app = self.admin_site.name
        template: Any = self.confirmation_template or _confirm_template()
        return TemplateResponse(request, template, context)

    def retry_sagas(self, request: Any, queryset: Any) -> Any:
        return self._operate(request, queryset, coordinator.retry, "retry_sagas", "retried")

    def cancel_sagas(self, request: Any, queryset: Any) -> Any:
        return self._operate(request, queryset, coordinator.cancel, "cancel_sagas", "cancelled")

    retry_sagas = admin.action(description="Retry selected sagas…", permissions=["operate"])(
        retry_sagas
    )
    cancel_sagas = admin.action(description="Cancel selected sagas…", permissions=["operate"])(
        cancel_sagas
    )


def _confirm_template() -> Any:
    engine = next(e for e in engines.all() if isinstance(e, DjangoTemplates))
    return engine.from_string(CONFIRM_TEMPLATE)


admin.site.register(Saga, SagaAdmin)
