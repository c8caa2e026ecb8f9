"""The whole schema on the one shared `metadata`: every module that defines tables is imported here.

Alembic's env.py and the schema-drift check (`migrate.schema_diff`) use this module, so a table module that
is not imported here is invisible to both. Add each new table module with its migration.
"""

from __future__ import annotations

from minichat_host.db import tables as domain_tables
from minichat_host.db.tables import metadata
from minichat_host.outbox import tables as outbox_tables

__all__ = ["domain_tables", "metadata", "outbox_tables"]
