"""Local storage building blocks: the on-disk file layout, text extraction, the full-text index,
the spreadsheet reader and image thumbnails.

These are plain synchronous helpers (file and SQLite I/O); async callers run them in a worker thread.
The built-in `local` storage plugin and the attachment domain use them; nothing here imports aiohttp,
the database pool or the outbox.
"""

from __future__ import annotations

from minichat_host.storage.index import LocalIndex
from minichat_host.storage.paths import index_path, local_file_path, upload_tmp_dir
from minichat_host.storage.sheets import read_sheet
from minichat_host.storage.text import extract_text
from minichat_host.storage.thumbnails import InvalidImage, Thumbnail, make_thumbnail

__all__ = [
    "InvalidImage",
    "LocalIndex",
    "Thumbnail",
    "extract_text",
    "index_path",
    "local_file_path",
    "make_thumbnail",
    "read_sheet",
    "upload_tmp_dir",
]
