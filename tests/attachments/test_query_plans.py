"""Every statement of an attachment's life on SQLite is answered through an index (see tests/query_plans.py):
uploads of a document and an image (with the upload limits' count), reads, a delete, chat deletion and
the clean-up the outbox delivers."""

from __future__ import annotations

from pathlib import Path

import pytest
from query_plans import table_scans, trace_statements

from attachments.harness import PREFIX, create_chat, open_client, open_stack, png_bytes, upload_ok
from minichat_host.db.engine import sqlite_path


@pytest.mark.parametrize("engine_name", ["sqlite"])
async def test_an_attachments_statements_all_use_an_index(
    migrated_db_url: str, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    traced = trace_statements(monkeypatch)
    async with open_stack(migrated_db_url, data_dir) as stack, open_client(stack) as client:
        chat_id = await create_chat(client)
        document = await upload_ok(client, chat_id, "notes.txt", "text/plain", b"some notes")
        image = await upload_ok(client, chat_id, "red.png", "image/png", png_bytes())
        url = f"{PREFIX}/chats/{chat_id}/attachments"
        assert (await client.get(f"{url}/{document['id']}")).status == 200
        assert (await client.delete(f"{url}/{image['id']}")).status == 204
        await stack.drain()
        assert (await client.get(f"{PREFIX}/chats")).status == 200
        assert (await client.delete(f"{PREFIX}/chats/{chat_id}")).status == 204
        await stack.drain()
    assert len(traced) > 15, "the trace saw too few statements to mean anything"
    assert table_scans(sqlite_path(migrated_db_url), traced) == {}
