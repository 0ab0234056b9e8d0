"""The Flask dashboard: events, incidents, gates, models and the retraining schedule.

`maskgate.dashboard.app.create_app(config)` builds the app; `maskgate dashboard` serves it
with waitress and runs the scheduler. This module imports nothing, so that registering
the subcommand keeps `maskgate --help` quick.
"""
