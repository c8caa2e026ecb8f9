import pprint
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from minichat_host.db import migrate
from minichat_host.db.engine import create_async_sa_engine
from minichat_host.db.schema import metadata

async def test_probe(db_url):
    await migrate.aupgrade(db_url)
    engine = create_async_sa_engine(db_url)
    async with engine.connect() as conn:
        diff = await conn.run_sync(lambda c: compare_metadata(MigrationContext.configure(c, opts={"compare_type": True, "compare_server_default": True}), metadata))
    await engine.dispose()
    pprint.pprint(diff)
