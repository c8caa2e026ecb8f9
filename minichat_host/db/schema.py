"""The whole schema on the one shared `metadata`: every module that defines tables is imported here.

Alembic's env.py and the schema-drift test use this module, so a table module that is not imported here is
invisible to both. Add each new table module (e.g. the outbox tables) with its migration.
"""

from __future__ import annotations

from minichat_host.db import tables as domain_tables
from minichat_host.db.tables import metadata

__all__ = ["domain_tables", "metadata"]
