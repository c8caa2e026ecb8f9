"""Where local storage keeps things under the data directory.

- `files/<tenant_id>/<file_id>`: the bytes of a file stored by the built-in `local` storage plugin;
- `index/local_fts.sqlite3`: the full-text index of the local vector stores (a derived cache);
- `tmp/uploads/`: uploads being received, before they are handed to the storage plugin.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

_SAFE_SEGMENT: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def safe_segment(value: str, what: str) -> str:
    """`value` when it can be one path component; ValueError for anything that could escape (`..`, `/`)."""
    if not _SAFE_SEGMENT.match(value) or value in {".", ".."}:
        raise ValueError(f"invalid {what} {value!r}")
    return value


def local_file_path(data_dir: Path, tenant_id: str, file_id: str) -> Path:
    """The file the `local` storage plugin stored as `file_id` for `tenant_id`."""
    return Path(data_dir) / "files" / safe_segment(tenant_id, "tenant id") / safe_segment(file_id, "file id")


def index_path(data_dir: Path) -> Path:
    return Path(data_dir) / "index" / "local_fts.sqlite3"


def upload_tmp_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "tmp" / "uploads"
