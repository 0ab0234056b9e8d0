"""Alembic environment and versions: the only way maskgate's schema changes (`maskgate db ...`)."""
