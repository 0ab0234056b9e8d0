"""The JSON API under /api/v1/ (described by dashboard/openapi.yaml; a test keeps the two in step).

Same session and CSRF rules as the pages: a state change needs the ``X-CSRF-Token`` header.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict
from pathlib import Path

from flask import Blueprint, Response, abort, g, request, send_file, stream_with_context

from maskgate.core import Action
from maskgate.dashboard import actions
from maskgate.dashboard.app import services
from maskgate.dashboard.queries import (
    CSV_PAGE_SIZE,
    ROW_ID,
    build_overview,
    csv_lines,
    event_json,
    gate_state,
    parse_days,
    parse_event_filter,
    parse_incident_filter,
    parse_limit,
    parse_run_id,
)
from maskgate.dashboard.security import admin_required, csrf_token
from maskgate.store import EventPage, Gate, ModelVersion, TrainingRun

blueprint = Blueprint("api", __name__, url_prefix="/api/v1")

OPENAPI_FILE = Path(__file__).parents[1] / "openapi.yaml"


@blueprint.get("/openapi.yaml")
def openapi():
    return send_file(OPENAPI_FILE, mimetype="application/yaml")


@blueprint.get("/me")
def me():
    return {"username": g.user.username, "role": g.user.role, "csrf_token": csrf_token()}


@blueprint.get("/overview")
def overview():
    days = parse_days(request.args.get("days"))
    data = build_overview(services().events, services().clock(), days, services().past_days)
    compliance = data.compliance
    return {
        "today": {action.value: data.today[action] for action in Action} | {"total": data.today_total},
        "compliance": {
            "days": [day.isoformat() for day in compliance.days],
            "gates": compliance.rates,
        },
        "gates_not_online": [
            {"gate_id": gate.gate_id, "state": state} for gate, state in data.gates_not_online
        ],
        "open_incidents": {"count": data.open_incidents, "more": data.open_incidents_capped},
        "latest_incidents": [event_json(event, _snapshots()) for event in data.latest_incidents],
    }


@blueprint.get("/events")
def events():
    filters = parse_event_filter(request.args)
    page = services().events.list_events(
        filters, limit=parse_limit(request.args.get("limit")), cursor=request.args.get("cursor")
    )
    return _page_json(page)


@blueprint.get("/events.csv")
def events_csv():
    filters = parse_event_filter(request.args)
    store = services().events
    first = store.list_events(filters, limit=CSV_PAGE_SIZE)  # here, not in the stream: a failure is a 503
    lines = stream_with_context(csv_lines(store, filters, first=first))
    stamp = services().clock().strftime("%Y%m%d-%H%M%S")
    return Response(
        lines,
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="maskgate-events-{stamp}.csv"'},
    )


@blueprint.get("/events/<uuid:event_id>")
def event(event_id: uuid.UUID):
    found = services().events.get_event(event_id)
    if found is None:
        abort(404, description=f"no event {event_id}")
    return event_json(found, _snapshots())


@blueprint.post("/events/<uuid:event_id>/review")
@admin_required
def review(event_id: uuid.UUID):
    body = _json_body()
    reviewed = actions.review_event(
        services().events,
        event_id,
        actions.parse_review_kind(_text_field(body, "action")),
        g.user,
        true_label=_text_field(body, "true_label"),
        note=_text_field(body, "note"),  # absent: the earlier note stays
    )
    return event_json(reviewed, _snapshots())


@blueprint.get("/incidents")
def incidents():
    page = services().events.list_incidents(
        parse_incident_filter(request.args),
        limit=parse_limit(request.args.get("limit")),
        cursor=request.args.get("cursor"),
    )
    return _page_json(page)


@blueprint.get("/gates")
def gates():
    now = services().clock()
    return {"gates": [_gate_json(gate, gate_state(gate, now)) for gate in services().events.list_gates()]}


@blueprint.get("/models")
def models():
    return {"models": [_model_json(model) for model in services().models.list_versions()]}


@blueprint.post("/models/<version>/promote")
@admin_required
def promote(version: str):
    return _model_json(actions.promote(services().models, version, services().on_model_change, g.user))


@blueprint.post("/models/rollback")
@admin_required
def rollback():
    return _model_json(actions.rollback(services().models, services().on_model_change, g.user))


@blueprint.get("/schedule")
def schedule():
    scheduler = services().scheduler
    running = services().runs.running()
    next_run = scheduler.next_run_at()
    return {
        "cron": scheduler.cron,
        "next_run_at": next_run.isoformat() if next_run else None,
        "scheduler_running": scheduler.running,
        "running": _run_json(running) if running else None,
    }


@blueprint.post("/schedule/run")
@admin_required
def run_now():
    return _run_json(actions.run_now(services().scheduler, g.user)), 202


@blueprint.get("/runs")
def runs():
    found = services().runs.list_runs(
        limit=parse_limit(request.args.get("limit")), before=parse_run_id(request.args.get("before"))
    )
    return {"runs": [_run_json(run, with_log=False) for run in found]}


@blueprint.get(f"/runs/<{ROW_ID}:run_id>")
def run(run_id: int):
    found = services().runs.get(run_id)
    if found is None:
        abort(404, description=f"no training run {run_id}")
    return _run_json(found)


# -- helpers -------------------------------------------------------------------------------------


def _json_body() -> dict:
    try:
        body = request.get_json(silent=True)
    except RecursionError:  # "[[[[..." nested deeper than the parser recurses: a 400, not a 500
        body = None
    if not isinstance(body, dict):
        abort(400, description="expected a JSON object body (Content-Type: application/json)")
    return body


def _snapshots() -> Path:
    return services().config.paths.snapshots


def _page_json(page: EventPage) -> dict:
    events = [event_json(event, _snapshots()) for event in page.events]
    return {"events": events, "next_cursor": page.next_cursor}


def _text_field(body: dict, name: str) -> str | None:
    """A text member of a JSON body; anything else (a number, a list, a NUL inside) is a 400."""
    value = body.get(name)
    if value is not None and (not isinstance(value, str) or "\x00" in value):
        abort(400, description=f"{name} must be text")
    return value


def _iso(value) -> str | None:
    return value.isoformat() if value else None


def _gate_json(gate: Gate, state: str) -> dict:
    data = asdict(gate)
    data.update(state=state, created_at=_iso(gate.created_at), last_seen_at=_iso(gate.last_seen_at))
    return data


def _model_json(model: ModelVersion) -> dict:
    return {
        "version": model.version,
        "status": model.status.value,
        "sha256": model.sha256,
        "card_sha256": model.card_sha256,
        "metrics": dict(model.metrics),
        "created_at": _iso(model.created_at),
        "promoted_at": _iso(model.promoted_at),
        "retired_at": _iso(model.retired_at),
    }


def _run_json(run: TrainingRun, with_log: bool = True) -> dict:
    data = {
        "run_id": run.run_id,
        "trigger": run.trigger.value,
        "status": run.status.value,
        "started_at": _iso(run.started_at),
        "finished_at": _iso(run.finished_at),
        "candidate_version": run.candidate_version,
        "metrics": dict(run.metrics) if run.metrics is not None else None,
        "reason": run.reason,
    }
    if with_log:
        data["log"] = run.log
    return data
