"""Many sidecars' live bundle channels in one process, for the channel benchmark: each one the
sidecar's own :class:`tessera.sidecar.channel.Channel` (its polls, backoff and jitter), with its own
Kubernetes token, over real HTTPS to the issuer. Only the bundle check is left out: each subscriber
keeps the sequence it was sent.

    python -m tests.bench.subscribers --issuer URL --ca FILE --namespace NS --tokens FILE --status FILE
        [--no-jitter]   (the baseline: a fixed 0.1 s retry, no backoff, no jitter)

Every half second the status file gets: how many are up, the polls answered, the failures, the
attempts started in each second, and per sequence when the first and the last subscriber got it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from tessera.sidecar import channel, metrics

_SEQUENCE = re.compile(rb'"sequence":(\d+)')


class Subscriber:
    def __init__(self, args: argparse.Namespace, token_file: Path, received: dict[int, list[float]]) -> None:
        self.sequence = 0
        self.received = received
        self.metrics = metrics.Metrics()
        rng = (lambda: 0.0) if args.no_jitter else None
        kwargs: dict[str, Any] = {"rng": rng} if rng else {}
        self.channel = channel.Channel(
            args.issuer, args.namespace, token_file, Path(args.ca), self.offer, lambda: self.sequence,
            self.metrics, wait=args.wait, **kwargs,
        )  # fmt: skip

    def offer(self, raw: bytes, source: str) -> str:
        found = _SEQUENCE.search(raw)
        if found is None:
            return "refused"
        sequence = int(found.group(1))
        if sequence <= self.sequence:
            return "older"
        self.sequence = sequence
        self.received.setdefault(sequence, []).append(time.time())
        return "installed"


def token_files(args: argparse.Namespace) -> list[Path]:
    folder = Path(args.status).parent / "tokens"
    folder.mkdir(exist_ok=True)
    paths = []
    for i, token in enumerate(Path(args.tokens).read_text().split()):
        path = folder / f"{i}"
        path.write_text(token)
        paths.append(path)
    return paths


async def main(args: argparse.Namespace, paths: list[Path]) -> None:
    received: dict[int, list[float]] = {}
    attempts: dict[int, int] = {}  # second (unix time) -> attempts started in it
    subscribers = []
    for path in paths:
        subscriber = Subscriber(args, path, received)
        poll = subscriber.channel.poll

        async def counted(poll: Any = poll) -> None:
            second = int(time.time())
            attempts[second] = attempts.get(second, 0) + 1
            await poll()

        subscriber.channel.poll = counted  # type: ignore[method-assign]
        if args.no_jitter:  # the naive client: retry every 0.1 s, whatever happened
            subscriber.channel._failed = _fixed_retry(subscriber.channel)  # type: ignore[method-assign]
        subscribers.append(subscriber)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(s.channel.run(stop)) for s in subscribers]
    status = Path(args.status)
    started = time.time()
    while True:
        up = sum(1 for s in subscribers if s.channel.up)
        doc = {
            "pid": os.getpid(),
            "subscribers": len(subscribers),
            "up": up,
            "polls": sum(s.metrics.channel_polls for s in subscribers),
            "failures": sum(sum(s.metrics.channel_failures.values()) for s in subscribers),
            "started": started,
            "attempts": attempts,
            "received": {str(seq): [min(times), max(times), len(times)] for seq, times in received.items()},
        }
        await asyncio.to_thread(_write, status, json.dumps(doc))
        await asyncio.sleep(0.5)
    for task in tasks:  # pragma: no cover (the process is stopped by a signal)
        task.cancel()


def _write(status: Path, text: str) -> None:
    tmp = status.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(status)


def _fixed_retry(subscription: channel.Channel) -> Any:
    async def failed(kind: str, message: str, retry_after: float, stop: asyncio.Event) -> None:
        subscription.failures += 1
        subscription.up, subscription.last_error = False, f"{kind}: {message}"
        await asyncio.sleep(0.1)

    return failed


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m tests.bench.subscribers")
    parser.add_argument("--issuer", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--tokens", required=True, help="a file of Kubernetes tokens, one per subscriber")
    parser.add_argument("--status", required=True)
    parser.add_argument("--wait", type=int, default=30)
    parser.add_argument("--no-jitter", action="store_true")
    parsed = parser.parse_args()
    asyncio.run(main(parsed, token_files(parsed)))
