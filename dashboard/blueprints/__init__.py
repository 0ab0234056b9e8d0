"""The dashboard's blueprints: one per area (auth, pages, the JSON API)."""
