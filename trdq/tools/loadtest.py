"""`trdq loadtest`: closed-loop load against a local trdq server.

C workers send N generation requests in total (each worker sends its next request as
soon as its previous one is answered) and the tool reports throughput, latency
percentiles of the successful requests, 429 rejections and errors:

    trdq loadtest --url http://127.0.0.1:8000 --endpoint image --concurrency 4 \\
        --requests 100 --json load.json

It is bounded on purpose: loopback servers only (it is a measuring tool, not a load
generator for other people's machines), at most MAX_REQUESTS requests, MAX_CONCURRENCY
workers and --max-seconds of wall time (requests not yet sent when time runs out are
not sent). The JSON file holds exactly:
{"concurrency", "requests", "ok", "rejected_429", "errors", "throughput_rps",
 "p50_s", "p95_s", "p99_s"}; `requests` counts the requests actually sent.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

logger = logging.getLogger(__name__)

MAX_REQUESTS = 10_000
MAX_CONCURRENCY = 256
PROMPTS = (
    "a red circle top left",
    "a blue square bottom right",
    "a green triangle in the center",
    "a yellow circle and a purple square",
)
ENDPOINTS = {"image": "/generate/image", "video": "/generate/video"}


class NotLoopbackError(ValueError):
    """The URL's host is not this machine."""


def check_loopback(url: str) -> None:
    """Refuse any URL whose host does not resolve only to loopback addresses."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise NotLoopbackError(f"{url!r} is not an http(s) URL")
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 80, proto=socket.IPPROTO_TCP)
    except socket.gaierror as error:
        raise NotLoopbackError(f"cannot resolve {parts.hostname!r}: {error}") from None
    addresses = {info[4][0] for info in infos}
    if not addresses or not all(ipaddress.ip_address(a).is_loopback for a in addresses):
        raise NotLoopbackError(
            f"{parts.hostname!r} resolves to {sorted(addresses)}: loadtest only targets "
            "loopback servers (127.0.0.0/8, ::1)"
        )


@dataclass
class LoadResult:
    concurrency: int
    requests: int = 0
    ok: int = 0
    rejected_429: int = 0
    errors: int = 0
    wall_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        ordered = sorted(self.latencies_s)
        return {
            "concurrency": self.concurrency,
            "requests": self.requests,
            "ok": self.ok,
            "rejected_429": self.rejected_429,
            "errors": self.errors,
            "throughput_rps": round(self.ok / self.wall_s, 4) if self.wall_s > 0 else 0.0,
            "p50_s": round(percentile(ordered, 50), 4),
            "p95_s": round(percentile(ordered, 95), 4),
            "p99_s": round(percentile(ordered, 99), 4),
        }


def percentile(ordered: list[float], q: float) -> float:
    """Linear-interpolated percentile of sorted values (0.0 for none)."""
    if not ordered:
        return 0.0
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def request_body(args: argparse.Namespace, index: int) -> dict:
    body: dict = {
        "prompt": PROMPTS[index % len(PROMPTS)],
        "num_inference_steps": args.steps,
        "seed": index,
    }
    if args.width:
        body["width"] = args.width
    if args.height:
        body["height"] = args.height
    if args.endpoint == "video" and args.frames:
        body["num_frames"] = args.frames
    return body


async def run_load(args: argparse.Namespace) -> LoadResult:
    import httpx

    result = LoadResult(concurrency=args.concurrency)
    url = args.url.rstrip("/") + ENDPOINTS[args.endpoint]
    headers = {"authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    next_index = 0
    started = time.perf_counter()
    deadline = started + args.max_seconds
    limits = httpx.Limits(max_connections=args.concurrency,
                          max_keepalive_connections=args.concurrency)

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal next_index
        while next_index < args.requests and time.perf_counter() < deadline:
            index = next_index
            next_index += 1
            result.requests += 1
            sent = time.perf_counter()
            try:
                timeout = max(0.1, min(args.timeout, deadline - sent))
                reply = await client.post(url, json=request_body(args, index), headers=headers,
                                          timeout=timeout)
            except httpx.HTTPError as error:
                result.errors += 1
                _sample(result, f"{type(error).__name__}: {error}")
                continue
            if reply.status_code == 200:
                result.ok += 1
                result.latencies_s.append(time.perf_counter() - sent)
            elif reply.status_code == 429:
                result.rejected_429 += 1
            else:
                result.errors += 1
                _sample(result, f"HTTP {reply.status_code}: {reply.text[:200]}")

    async with httpx.AsyncClient(limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(args.concurrency)))
    result.wall_s = time.perf_counter() - started
    if result.requests < args.requests:
        logger.warning("time limit: sent %d of %d requests", result.requests, args.requests)
    return result


def _sample(result: LoadResult, message: str) -> None:
    if len(result.error_samples) < 5:
        result.error_samples.append(message)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="loopback server URL")
    parser.add_argument("--endpoint", choices=sorted(ENDPOINTS), default="image")
    parser.add_argument("--concurrency", type=int, default=1,
                        help=f"parallel clients (1..{MAX_CONCURRENCY})")
    parser.add_argument("--requests", type=int, default=20,
                        help=f"requests in total (1..{MAX_REQUESTS})")
    parser.add_argument("--json", type=Path, default=None, help="write the summary here")
    parser.add_argument("--steps", type=int, default=4, help="num_inference_steps per request")
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--frames", type=int, default=None, help="num_frames (video)")
    parser.add_argument("--timeout", type=float, default=360.0,
                        help="per-request seconds (above the server's default 300 s limit, "
                        "so a server-side 504 is seen rather than a client timeout)")
    parser.add_argument("--max-seconds", type=float, default=600.0,
                        help="wall-time bound for the whole run")
    parser.add_argument("--api-key", default=os.environ.get("TRDQ_API_KEY"),
                        help="bearer key (default: $TRDQ_API_KEY)")
    return parser


def run(args: argparse.Namespace) -> int:
    """Run a load test from parsed arguments; 0 when no request failed (429s allowed)."""
    if not 1 <= args.concurrency <= MAX_CONCURRENCY:
        print(f"--concurrency must be 1..{MAX_CONCURRENCY}", file=sys.stderr)
        return 2
    if not 1 <= args.requests <= MAX_REQUESTS:
        print(f"--requests must be 1..{MAX_REQUESTS}", file=sys.stderr)
        return 2
    if args.max_seconds <= 0 or args.timeout <= 0:
        print("--max-seconds and --timeout must be positive", file=sys.stderr)
        return 2
    try:
        check_loopback(args.url)
    except NotLoopbackError as error:
        print(f"refused: {error}", file=sys.stderr)
        return 2
    result = asyncio.run(run_load(args))
    summary = result.summary()
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
    for sample in result.error_samples:
        print(f"error: {sample}", file=sys.stderr)
    return 0 if result.errors == 0 else 1


def main(argv: list[str] | None = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(
        prog="trdq loadtest", description=__doc__.split("\n\n")[0]
    ))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
