"""Memory per idle whatsmeow client and the start-up time of a restore storm (run by hand).

    .venv/bin/python -m bench.whatsmeow_clients [--counts 200 1000] [--concurrency 32]

Every session gets a device store in its own folder (made by one real neonize connection
attempt, then copied), and is started *with credentials* through a semaphore of the node's
restore concurrency, as a node restoring its sessions does. This machine has no route to
WhatsApp, so "started" means: the neonize client is created, its store opened and its first
connection attempt made and failed (each driver then waits on its backoff with a TCP probe,
as it would in an outage); on a real network a client also completes the Noise handshake.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from node.config import DEFAULT_RESTORE_CONCURRENCY
from node.drivers.base import DriverEvent, DriverEventKind
from node.drivers.whatsmeow import WhatsmeowDriver, WhatsmeowDriverFactory
from node.drivers.whatsmeow_events import paired_credentials

CREDENTIALS = paired_credentials("4915123456789@s.whatsapp.net")


def rss_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


async def seed_store(root: Path) -> Path:
    """One real store: what a neonize connection attempt creates."""
    driver = WhatsmeowDriverFactory(root, probe_address=None)("seed", "seed")
    down = asyncio.Event()
    await driver.start(None, lambda event: down.set())
    async with asyncio.timeout(30):
        await down.wait()
    await driver.stop(logout=False)
    return driver.store_path


async def storm(root: Path, seed: Path, count: int, concurrency: int) -> dict[str, Any]:
    factory = WhatsmeowDriverFactory(root)
    for index in range(count):
        target = factory.store_path(f"ws-{index}", "s")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(seed, target)
    rss_before, files_before, threads_before = rss_bytes(), open_files(), threading.active_count()
    gate = asyncio.Semaphore(concurrency)
    drivers: list[WhatsmeowDriver] = []

    async def restore(index: int) -> float:
        async with gate:  # the restore concurrency bound, held until the client has tried
            driver = factory(f"ws-{index}", "s")
            drivers.append(driver)
            tried = asyncio.Event()

            def on_event(event: DriverEvent) -> None:
                if event.kind in {DriverEventKind.DISCONNECTED, DriverEventKind.READY}:
                    tried.set()

            started = time.monotonic()
            await driver.start(CREDENTIALS, on_event)
            await tried.wait()
            return time.monotonic() - started

    began = time.monotonic()
    latencies = sorted(await asyncio.gather(*(restore(i) for i in range(count))))
    storm_seconds = time.monotonic() - began
    await asyncio.sleep(2)  # settle: every client idle, waiting on its backoff
    rss_after = rss_bytes()
    result = {
        "clients": count,
        "restore_concurrency": concurrency,
        "storm_seconds": round(storm_seconds, 3),
        "per_client_start_ms_p50": round(latencies[len(latencies) // 2] * 1000, 1),
        "per_client_start_ms_p99": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 1),
        "rss_delta_mib": round((rss_after - rss_before) / 2**20, 1),
        "rss_per_idle_client_kib": round((rss_after - rss_before) / count / 1024, 1),
        "open_files_per_client": round((open_files() - files_before) / count, 2),
        "threads_per_idle_client": round((threading.active_count() - threads_before) / count, 2),
    }
    began = time.monotonic()
    await asyncio.gather(*(driver.stop(logout=False) for driver in drivers))
    result["stop_all_seconds"] = round(time.monotonic() - began, 3)
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[200, 1000])
    parser.add_argument("--concurrency", type=int, default=DEFAULT_RESTORE_CONCURRENCY)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="whatsmeow-bench-") as folder:
        root = Path(folder)
        seed = await seed_store(root)
        runs = []
        for count in arguments.counts:
            runs.append(await storm(root / f"run-{count}", seed, count, arguments.concurrency))
        report = {
            "network": "none (no route to WhatsApp): started = created, store opened, first "
            "connection attempt made and failed, then idle on the backoff",
            "rss_base_mib": round(rss_bytes() / 2**20, 1),
            "runs": runs,
        }
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
