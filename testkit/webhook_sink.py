"""A webhook receiver in a process of its own, for the benchmark: ``python -m
testkit.webhook_sink --port P --secret S --out FILE``. It is the test receiver
(:mod:`testkit.webhook_receiver`: every signature verified, 200 to everything), away from the
load generator's interpreter lock, and appends one JSON line per request to ``FILE`` (event id,
type, sequence, the event's timestamp, arrival time, whether the signature verified) every
50 ms."""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from pathlib import Path

from testkit.webhook_receiver import WebhookReceiver

FLUSH_SECONDS = 0.05


def main() -> None:
    """Serve until SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m testkit.webhook_sink")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    receiver = WebhookReceiver([args.secret], port=args.port)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    receiver.start()
    written = 0
    with args.out.open("a") as out:
        while True:
            is_last = stopped.wait(FLUSH_SECONDS)
            received = receiver.snapshot()
            for each in received[written:]:
                record = {
                    "id": each.event_id,
                    "type": each.body.get("type", ""),
                    "sequence": each.body.get("sequence", 0),
                    "timestamp": each.body.get("timestamp", ""),
                    "session_id": each.body.get("session_id", ""),
                    "received_at": each.received_at_unix,
                    "verified": each.verified_by == (0,),
                    "status": each.status,
                }
                out.write(json.dumps(record) + "\n")
            written = len(received)
            out.flush()
            if is_last:
                break
    receiver.stop()
    time.sleep(0)


if __name__ == "__main__":
    main()
