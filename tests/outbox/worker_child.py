"""A real scheduler process for the outbox crash and multi-process tests (run as a script, not collected).

Runs an Outbox on `--url` with one queue whose handler appends a JSON line per delivery to `--out`
(written with os.write, so lines survive a SIGKILL), prints READY when started, and stops cleanly on
SIGTERM. `--crash-before-ack` SIGKILLs the process at its first ack: after the hook succeeded, before the
ack transaction - the window "nothing is lost" is about.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from typing import Any

import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from minichat_host.config import OutboxConfig
from minichat_host.db.engine import connect_database, dialect_name
from minichat_host.outbox import Delivery, Outbox, SchedulerAlreadyRunning
from minichat_host.outbox import scheduler as scheduler_module
from minichat_host.outbox.metrics import OutboxMetrics
from minichat_host.outbox.tables import outbox_processor


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--out", required=True)
    parser.add_argument("--lease", type=float, default=3.0)
    parser.add_argument("--timeout", type=float, default=1.0)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds each hook call takes")
    parser.add_argument("--max-concurrent", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--crash-before-ack", action="store_true")
    parser.add_argument(
        "--check-lease", action="store_true", help="verify in the hook that we hold the lease"
    )
    return parser.parse_args()


async def main() -> int:
    args = parse_args()
    database = await connect_database(args.url)
    config = OutboxConfig(
        lease_seconds=args.lease,
        lease_headroom_seconds=min(0.5, args.lease / 4),
        poll_interval_seconds=0.05,
        reconcile_interval_seconds=0.1,
        retry_base_seconds=0.05,
        retry_max_seconds=0.2,
        max_concurrent_partitions=args.max_concurrent,
    )
    outbox = Outbox(
        database, config, dialect=dialect_name(args.url), metrics=OutboxMetrics(CollectorRegistry())
    )
    out = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    async def handler(delivery: Delivery) -> None:
        started = time.time()
        holder_ok = True
        if args.check_lease:
            holder = await database.fetch_val(
                sa.select(outbox_processor.c.locked_by).where(
                    outbox_processor.c.partition_id == delivery.partition_id
                )
            )
            holder_ok = holder == outbox.worker_id
        if args.delay:
            await asyncio.sleep(args.delay)
        record: dict[str, Any] = {
            "pid": os.getpid(),
            "worker": outbox.worker_id,
            "partition": delivery.partition,
            "seq": delivery.seq,
            "payload": delivery.payload.decode(),
            "attempts": delivery.attempts,
            "start": started,
            "end": time.time(),
            "holder_ok": holder_ok,
        }
        os.write(out, (json.dumps(record) + "\n").encode())

    if args.crash_before_ack:
        real_ack = scheduler_module.guarded_ack

        async def crash_at_ack(*ack_args: Any, **ack_kwargs: Any) -> Any:
            os.kill(os.getpid(), signal.SIGKILL)
            return await real_ack(*ack_args, **ack_kwargs)

        scheduler_module.guarded_ack = crash_at_ack  # type: ignore[assignment]

    outbox.register_queue(
        args.queue, handler, partitions=args.partitions, timeout=args.timeout, batch_size=args.batch_size
    )
    try:
        await outbox.start()
    except SchedulerAlreadyRunning as exc:
        print(f"REFUSED: {exc}", file=sys.stderr, flush=True)
        await database.disconnect()
        return 3
    print("READY", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await outbox.stop()
    await database.disconnect()
    os.close(out)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
