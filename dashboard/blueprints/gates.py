"""Gates: online or not (from the availability topic), fps, model version, last seen."""

from __future__ import annotations

from flask import Blueprint, render_template

from maskgate.dashboard.app import services
from maskgate.dashboard.queries import gate_state

blueprint = Blueprint("gates", __name__)


@blueprint.get("/gates")
def index():
    now = services().clock()
    gates = [(gate, gate_state(gate, now)) for gate in services().events.list_gates()]
    return render_template("gates.html", gates=gates)
