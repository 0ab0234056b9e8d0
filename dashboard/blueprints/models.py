"""Model versions: card metrics and plots, which one is active, promote and roll back (admins)."""

from __future__ import annotations

from flask import Blueprint, abort, flash, g, redirect, render_template, send_file, url_for

from maskgate.dashboard import actions
from maskgate.dashboard.app import services
from maskgate.dashboard.files import (
    PLOT_CONTENT_SECURITY_POLICY,
    card_facts,
    flat_metrics,
    plot_file,
    plot_names,
    read_card,
)
from maskgate.dashboard.security import admin_required

blueprint = Blueprint("models", __name__)


@blueprint.get("/models")
def index():
    versions = services().models.list_versions()
    cards = {model.version: read_card(model) for model in versions}
    return render_template(
        "models.html",
        versions=versions,
        cards=cards,
        card_facts=card_facts,
        plots={model.version: plot_names(model) for model in versions},
        flat_metrics=flat_metrics,
        can_roll_back=any(model.is_active for model in versions),
    )


@blueprint.get("/models/<version>/files/<name>")
def plot(version: str, name: str):
    model = services().models.get(version)
    path = plot_file(model, name) if model else None
    if path is None:
        abort(404, description="no such plot")
    response = send_file(path, max_age=300, conditional=True)
    response.cache_control.public = False  # send_file said public: no shared cache may keep it
    response.cache_control.private = True
    response.headers["Content-Security-Policy"] = PLOT_CONTENT_SECURITY_POLICY
    return response


@blueprint.post("/models/<version>/promote")
@admin_required
def promote(version: str):
    try:
        model = actions.promote(services().models, version, services().on_model_change, g.user)
    except actions.NotAnnounced as exc:  # active, but the gates were not told: the page says so
        flash(str(exc))
    else:
        flash(f"Model {model.version} is now active.")
    return redirect(url_for("models.index"))


@blueprint.post("/models/rollback")
@admin_required
def rollback():
    try:
        model = actions.rollback(services().models, services().on_model_change, g.user)
    except actions.NotAnnounced as exc:
        flash(str(exc))
    else:
        flash(f"Rolled back: model {model.version} is active again.")
    return redirect(url_for("models.index"))
