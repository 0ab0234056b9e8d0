"""Events and incidents: the filtered history, one event's review page, its snapshot."""

from __future__ import annotations

import uuid

from flask import Blueprint, abort, flash, g, redirect, render_template, request, send_file, url_for

from maskgate.core import LABELS, Action, Label
from maskgate.dashboard import actions, charts
from maskgate.dashboard.app import services
from maskgate.dashboard.queries import (
    PAGE_SIZE,
    BadFilter,
    filter_args,
    parse_event_filter,
    parse_incident_filter,
)
from maskgate.dashboard.security import admin_required
from maskgate.files import snapshot_file
from maskgate.store import EventFilter, EventPage, InvalidCursorError

blueprint = Blueprint("events", __name__)


@blueprint.get("/events")
def index():
    error, page, filters = None, EventPage([], None), EventFilter()
    try:
        filters = parse_event_filter(request.args)
        page = services().events.list_events(filters, limit=PAGE_SIZE, cursor=request.args.get("cursor"))
    except (BadFilter, InvalidCursorError) as exc:
        error = str(exc)
    return render_template(
        "events.html",
        page=page,
        error=error,
        args=request.args,
        link_args=filter_args(filters),
        # The form shows the filter as understood (label=mask selects with_mask); after an error, as typed.
        form=request.args if error else filter_args(filters),
        gates=services().events.list_gates(),
        labels=LABELS,
        decisions=list(Action),
        live=not request.args.get("cursor") and error is None,
    ), (400 if error else 200)


@blueprint.get("/incidents")
def incidents():
    status = request.args.get("status") or "open"
    filters = parse_incident_filter(request.args)
    page = services().events.list_incidents(filters, limit=PAGE_SIZE, cursor=request.args.get("cursor"))
    return render_template(
        "incidents.html",
        page=page,
        status=status,
        gate=filters.gate_id or "",
        gates=services().events.list_gates(),
    )


@blueprint.get("/events/<uuid:event_id>")
def detail(event_id: uuid.UUID):
    event = services().events.get_event(event_id)
    if event is None:
        abort(404, description=f"no event {event_id}")
    probabilities = charts.bar_chart(
        [(label.value, event.probabilities.get(label, 0.0)) for label in LABELS],
        title="Class probabilities",
        maximum=1.0,
        percent=True,
        highlight=event.label.value,
    )
    has_snapshot = snapshot_file(services().config.paths.snapshots, event.snapshot_path) is not None
    return render_template(
        "event.html",
        event=event,
        probabilities=probabilities,
        has_snapshot=has_snapshot,
        labels=LABELS,
        kinds=actions.ReviewKind,
    )


@blueprint.post("/events/<uuid:event_id>/review")
@admin_required
def review(event_id: uuid.UUID):
    kind = actions.parse_review_kind(request.form.get("action"))
    event = actions.review_event(
        services().events,
        event_id,
        kind,
        g.user,
        true_label=request.form.get("true_label"),
        note=request.form.get("note", ""),
    )
    flash(_review_message(kind, event.review.true_label if event.review else None))
    return redirect(url_for("events.detail", event_id=event_id))


def _review_message(kind: actions.ReviewKind, label: Label | None) -> str:
    if kind is actions.ReviewKind.FALSE_POSITIVE:
        return "Marked as a false positive."
    verb = "Confirmed as" if kind is actions.ReviewKind.CONFIRM else "Relabelled to"
    return f"{verb} {label.value if label else '?'}; the face joins the retraining pool."


@blueprint.get("/events/<uuid:event_id>/snapshot")
def snapshot(event_id: uuid.UUID):
    event = services().events.get_event(event_id)
    path = snapshot_file(services().config.paths.snapshots, event.snapshot_path if event else None)
    if path is None:
        abort(404, description="no snapshot for this event")
    response = send_file(path, conditional=True)
    response.headers["Content-Disposition"] = "inline"
    response.headers["Cache-Control"] = "private, no-store"  # a face: never in a shared cache
    return response
