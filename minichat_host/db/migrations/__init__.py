"""Alembic migration environment of minichat (package data; run through minichat_host.db.migrate)."""
