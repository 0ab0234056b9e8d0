"""Model downloads for the gates: ``GET /api/v1/models/<version>/files/<name>``.

A gate fetches the files of an announced model folder here (``maskgate.gate.reload``). It has no
dashboard session, so this one endpoint also accepts ``Authorization: Bearer <rollout.token>``
(compared in constant time; a token shorter than 16 characters is never accepted). A signed-in
user may download too.

Only what the model's card lists (and the card itself) is served, by plain file name, from the
folder the registry holds for that version: ``../``, absolute paths, links out of the folder and
files the card does not list are 404. The gate checks every file's sha256 anyway; this keeps the
endpoint from serving anything else on the disk.
"""

from __future__ import annotations

import re
from pathlib import Path

from flask import Blueprint, abort, request, send_file

from maskgate.dashboard.app import services
from maskgate.dashboard.files import CARD_FILE, read_card
from maskgate.dashboard.security import bearer_matches
from maskgate.store import ModelVersion

blueprint = Blueprint("rollout", __name__, url_prefix="/api/v1")

FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
TOKEN_ENDPOINTS = frozenset({"rollout.model_file"})  # endpoints a gate's bearer token opens


def gate_authorized() -> bool:
    """The request carries the configured rollout token, and asks for an endpoint it opens."""
    if request.endpoint not in TOKEN_ENDPOINTS:
        return False
    return bearer_matches(services().config.rollout.token)


@blueprint.get("/models/<version>/files/<name>")
def model_file(version: str, name: str):
    model = services().models.get(version)
    if model is None:
        abort(404, description="no such model version")
    path = model_artifact(model, name)
    if path is None:
        abort(404, description="no such file in this model")
    response = send_file(path, mimetype="application/octet-stream", as_attachment=True, download_name=name)
    response.headers["Cache-Control"] = "no-store"
    return response


def model_artifact(model: ModelVersion, name: str) -> Path | None:
    """`name` in the model's folder if its card lists it (or it is the card) and it is a file right there."""
    if not FILE_NAME.match(name):
        return None
    card = read_card(model)
    if card is None:
        return None
    listed = card.get("files")
    if name != CARD_FILE and not (isinstance(listed, dict) and name in listed):
        return None
    try:
        root = Path(model.path).resolve()
        path = (root / name).resolve()
    except (OSError, ValueError):
        return None
    if path.parent != root or not path.is_file():
        return None
    return path
