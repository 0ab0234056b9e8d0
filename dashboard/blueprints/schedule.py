"""The retraining schedule: next run, run now (admins), the history of runs with their logs."""

from __future__ import annotations

from flask import Blueprint, abort, flash, g, redirect, render_template, request, url_for

from maskgate.dashboard import actions
from maskgate.dashboard.app import services
from maskgate.dashboard.files import flat_metrics
from maskgate.dashboard.queries import ROW_ID, parse_run_id
from maskgate.dashboard.security import admin_required

blueprint = Blueprint("schedule", __name__)

RUNS_PER_PAGE = 25


@blueprint.get("/schedule")
def index():
    before = parse_run_id(request.args.get("before"))
    runs = services().runs.list_runs(limit=RUNS_PER_PAGE + 1, before=before)
    scheduler = services().scheduler
    return render_template(
        "schedule.html",
        cron=scheduler.cron,
        next_run_at=scheduler.next_run_at(),
        scheduler_running=scheduler.running,
        running=services().runs.running(),
        runs=runs[:RUNS_PER_PAGE],
        older=runs[RUNS_PER_PAGE - 1].run_id if len(runs) > RUNS_PER_PAGE else None,
    )


@blueprint.get(f"/schedule/runs/<{ROW_ID}:run_id>")
def run(run_id: int):
    found = services().runs.get(run_id)
    if found is None:
        abort(404, description=f"no training run {run_id}")
    return render_template("run.html", run=found, flat_metrics=flat_metrics)


@blueprint.post("/schedule/run")
@admin_required
def run_now():
    started = actions.run_now(services().scheduler, g.user)
    flash(f"Training run {started.run_id} started.")
    return redirect(url_for("schedule.run", run_id=started.run_id))
