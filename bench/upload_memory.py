"""How much a large upload raises the server process's memory.

Serves the attachment API in this process (SQLite in a temporary data directory, the bundled plugins,
the built-in `local` storage) and uploads from a separate client process, so only the server's memory is
measured. Per upload it resets the kernel's peak-RSS mark (`/proc/self/clear_refs`), uploads, and reports
the peak RSS growth above the resident size just before. A 1 KiB upload measured the same way is the
baseline; the target is a 50 MiB upload staying within ~10 MiB of growth, i.e. the body is streamed to
disk and never held in memory.

    python bench/upload_memory.py [--size-mb 50]

Linux only (reads /proc/self/status).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import textwrap
import uuid
from pathlib import Path
from typing import Any

from aiohttp import web

from minichat_host.api import attachments as attachments_api
from minichat_host.api.edge import edge_middleware
from minichat_host.auth import Authenticator
from minichat_host.config import Config, parse_config
from minichat_host.db.engine import connect_database, dialect_name
from minichat_host.db.migrate import aupgrade
from minichat_host.domain.attachments import AttachmentService
from minichat_host.domain.catalog import CatalogService
from minichat_host.domain.chats import ChatService
from minichat_host.outbox import Outbox
from minichat_host.plugins.manager import PluginHost

MIB = 1024 * 1024
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"

CLIENT = textwrap.dedent(
    """
    import asyncio, sys
    import aiohttp

    async def main(url, path, filename, content_type):
        form = aiohttp.FormData()
        with open(path, "rb") as handle:
            form.add_field("file", handle, filename=filename, content_type=content_type)
            async with aiohttp.ClientSession() as session:
                async with session.post(url, data=form) as response:
                    body = await response.text()
                    print(response.status, body[:300])

    asyncio.run(main(*sys.argv[1:5]))
    """
)


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> None:
    # Writing 5 resets VmHWM (the peak resident set) to the current resident set (Linux >= 4.0).
    Path("/proc/self/clear_refs").write_text("5")


def make_config(data_dir: Path, size_mb: int) -> Config:
    limit_mb = size_mb + 16
    catalog = [
        {
            "id": "bench-model",
            "provider_model_id": "minichat-local",
            "display_name": "Bench",
            "provider_id": "local",
            "general_config": {
                "max_file_size_mb": limit_mb,
                "tool_support": {"file_search": True, "code_interpreter": True},
            },
        }
    ]
    return parse_config(
        {
            "server": {"data_dir": str(data_dir)},
            "rag": {
                "uploaded_file_max_size_kb": limit_mb * 1024,
                "max_total_upload_mb_per_chat": 4 * limit_mb,
            },
            "plugins": {"audit_vendor": "", "settings": {"policy_static": {"model_catalog": catalog}}},
        },
        env={},
    )


async def upload(url: str, path: Path, filename: str, content_type: str) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CLIENT,
        url,
        str(path),
        filename,
        content_type,
        stdout=subprocess.PIPE,
    )
    out, _ = await process.communicate()
    result = out.decode().strip()
    if not result.startswith("201"):
        raise RuntimeError(f"upload failed: {result}")
    return result


async def measure(url: str, path: Path, filename: str, content_type: str) -> tuple[int, int, int]:
    """(file KiB, resident KiB before, peak growth KiB) of one upload."""
    size_kib = await asyncio.to_thread(lambda: path.stat().st_size // 1024)
    reset_peak()
    before = status_kib("VmRSS")
    await upload(url, path, filename, content_type)
    return size_kib, before, status_kib("VmHWM") - before


async def run(size_mb: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="minichat-bench-") as tmp:
        root = Path(tmp)
        config = make_config(root / "data", size_mb)
        await aupgrade(config.database_url())
        database = await connect_database(config.database_url())
        plugins = PluginHost(config)
        await plugins.start()
        try:
            outbox = Outbox(database, config.outbox, dialect=dialect_name(config.database_url()))
            catalog = CatalogService(plugins)
            chats = ChatService(database, catalog)
            service = AttachmentService(
                database, config=config, catalog=catalog, plugins=plugins, outbox=outbox
            )
            prefix = config.server.url_prefix
            app = web.Application(middlewares=[edge_middleware(Authenticator(config.auth), prefix)])
            app[attachments_api.ATTACHMENT_SERVICE_KEY] = service
            attachments_api.register(app, prefix)
            runner = web.AppRunner(app)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            chat = await chats.create_chat(
                uuid.UUID(config.auth.dev_tenant_id),
                uuid.UUID(config.auth.dev_user_id),
                title="bench",
                model=None,
            )
            url = f"http://127.0.0.1:{port}{prefix}/v1/chats/{chat.id}/attachments"

            small = root / "small.txt"
            small.write_bytes(b"warm up and baseline " * 50)
            big_text = root / "big.txt"
            line = b"The quarterly report lists revenue, costs and the launch date of the product.\n"
            with big_text.open("wb") as handle:
                for _ in range(size_mb * MIB // len(line) + 1):
                    handle.write(line)
            big_sheet = root / "big.xlsx"
            with big_sheet.open("wb") as handle:
                handle.write(os.urandom(size_mb * MIB))

            await upload(url, small, "warmup.txt", "text/plain")  # imports, index creation, connections
            results = {
                "baseline_1kib_text": await measure(url, small, "small.txt", "text/plain"),
                f"{size_mb}mib_spreadsheet_stream_and_store": await measure(url, big_sheet, "big.xlsx", XLSX),
                f"{size_mb}mib_text_stream_store_and_index": await measure(
                    url, big_text, "big.txt", "text/plain"
                ),
            }
            await runner.cleanup()
            return {"size_mb": size_mb, "results": results}
        finally:
            await plugins.aclose()
            await database.disconnect()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mb", type=int, default=50)
    args = parser.parse_args()
    if not Path("/proc/self/clear_refs").exists():
        print("needs Linux /proc (clear_refs, status)", file=sys.stderr)
        return 2
    report = asyncio.run(run(args.size_mb))
    baseline = report["results"]["baseline_1kib_text"][2]
    print("upload memory: server process peak RSS growth per upload (baseline: a 1 KiB upload, same run)")
    for name, (size, before, growth) in report["results"].items():
        ratio = growth / baseline if baseline > 0 else float("inf")
        print(
            f"  {name:40s} file={size / 1024:7.2f} MiB  rss_before={before / 1024:6.1f} MiB  "
            f"peak_growth={growth / 1024:5.2f} MiB  vs_baseline={ratio:5.1f}x  "
            f"growth/file={growth / max(size, 1):.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
