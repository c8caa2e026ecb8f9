"""Alembic revisions, applied in order by minichat_host.db.migrate."""
