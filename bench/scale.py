"""A turn start's reads against the size of the whole deployment: they must cost what the chat holds, not
what every tenant holds.

One SQLite database per schema, filled alike: `--chats` chats over 100 tenants and `--attachments` ready
documents spread over them. The timed work is what a send reads about one chat before its transaction
(`turns.first_look`, and the chat's ready documents since it has some), repeated `--reads` times, best of
five rounds. The baseline is the same code on the schema before migration 0004 (no index of attachments by
chat id alone: each documents read went through the index of every tenant's attachments).

    python bench/scale.py                                   # 10k chats, 100k attachments (~1 minute)
    python bench/scale.py --attachments 1000,10000,100000
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sqlite3
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import log, save_results, table  # bench/common.py, next to this file

from minichat_host.db.engine import connect_database
from minichat_host.db.migrate import aupgrade
from minichat_host.db.repos import turns

BASELINE_REVISION = "0003_chat_message_count"
NOW = "2026-01-01 00:00:00.000000"


def fill(path: Path, chats: int, attachments: int) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    """Rows written straight through sqlite3 (the same for both schemas); the (tenant, user, chat) read."""
    tenants = [uuid.uuid4().hex for _ in range(100)]
    rows = [(uuid.uuid4().hex, tenants[i % 100], uuid.uuid4().hex) for i in range(chats)]
    raw = sqlite3.connect(path)
    raw.executemany(
        "INSERT INTO chats (id, tenant_id, user_id, model, is_temporary, created_at, updated_at) "
        "VALUES (?, ?, ?, 'm', 0, ?, ?)",
        [(chat, tenant, user, NOW, NOW) for chat, tenant, user in rows],
    )
    raw.executemany(
        "INSERT INTO attachments (id, tenant_id, chat_id, uploaded_by_user_id, filename, content_type, "
        "size_bytes, storage_backend, status, attachment_kind, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, 'notes.txt', 'text/plain', 10, 'local', 'ready', 'document', ?, ?)",
        [
            (uuid.uuid4().hex, rows[i % chats][1], rows[i % chats][0], rows[i % chats][2], NOW, NOW)
            for i in range(attachments)
        ],
    )
    raw.commit()
    raw.close()  # no ANALYZE: minichat runs none (with statistics SQLite skip-scans the old index per tenant)
    chat, tenant, user = rows[min(chats, attachments) // 2]  # a chat with documents
    return uuid.UUID(tenant), uuid.UUID(user), uuid.UUID(chat)


async def measure(revision: str, chats: int, attachments: int, reads: int) -> tuple[float, int]:
    """Best mean µs of one chat's first look + documents read; and the documents it found."""
    directory = Path(tempfile.mkdtemp(prefix="minichat-scale-"))
    try:
        url = f"sqlite:///{directory}/scale.db"
        await aupgrade(url, revision)
        tenant, user, chat = fill(directory / "scale.db", chats, attachments)
        db = await connect_database(url)
        try:

            async def one_send() -> int:
                looked = await turns.first_look(db, tenant, user, chat, uuid.uuid4())
                assert looked is not None and looked.has_ready_documents
                return len(await turns.ready_documents(db, chat))

            documents = 0
            for _ in range(max(1, reads // 10)):
                documents = await one_send()
            best = float("inf")
            for _ in range(5):
                started = time.perf_counter()
                for _ in range(reads):
                    await one_send()
                best = min(best, (time.perf_counter() - started) / reads)
            return best * 1e6, documents
        finally:
            await db.disconnect()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--chats", type=int, default=10_000)
    parser.add_argument("--attachments", default="100000", help="comma list of deployment sizes")
    parser.add_argument("--reads", type=int, default=200)
    args = parser.parse_args()
    rows, results = [], []
    for attachments in (int(n) for n in args.attachments.split(",")):
        log(f"{attachments} attachments over {args.chats} chats")
        before, found = await measure(BASELINE_REVISION, args.chats, attachments, args.reads)
        after, _ = await measure("head", args.chats, attachments, args.reads)
        rows.append(
            [
                f"{attachments:,}",
                str(found),
                f"{before:,.0f} µs",
                f"{after:,.0f} µs",
                f"x{after / before:.3f}",
            ]
        )
        results.append(
            {
                "attachments": attachments,
                "chats": args.chats,
                "documents_read": found,
                "baseline_us": before,
                "minichat_us": after,
            }
        )
    print("== a send's reads of one chat (first look + ready documents), SQLite ==")
    print(
        table(
            [
                "attachments",
                "chat's documents",
                f"baseline ({BASELINE_REVISION})",
                "minichat (head)",
                "ratio",
            ],
            rows,
        )
    )
    print(f"results: {save_results('scale', {'args': vars(args), 'results': results})}")


if __name__ == "__main__":
    asyncio.run(main())
