"""The overview: today's decisions, compliance per gate, gates not online, open incidents."""

from __future__ import annotations

from flask import Blueprint, render_template, request

from maskgate.core import Action
from maskgate.dashboard import charts
from maskgate.dashboard.app import services
from maskgate.dashboard.queries import build_overview, parse_days

blueprint = Blueprint("overview", __name__)


@blueprint.get("/")
def index():
    days = parse_days(request.args.get("days"))
    overview = build_overview(services().events, services().clock(), days, services().past_days)
    compliance = overview.compliance
    chart = charts.line_chart(
        compliance.days,
        compliance.rates,
        title=f"Share of faces with a mask worn correctly, last {days} days",
    )
    counts = charts.bar_chart(
        [(action.value, overview.today[action]) for action in Action], title="Decisions today (UTC)"
    )
    return render_template(
        "overview.html", overview=overview, chart=chart, counts=counts, days=days, swatch=charts.swatch
    )
