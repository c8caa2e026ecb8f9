import asyncio
from minichat_host.db import migrate

async def test_nolock(pg_db_url, monkeypatch):
    orig = migrate._on_connection
    monkeypatch.setattr(migrate, "_on_connection", lambda url, work, lock=True: orig(url, work, lock=False))
    await asyncio.gather(*(migrate.aupgrade(pg_db_url) for _ in range(3)))
