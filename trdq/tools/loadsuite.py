"""`trdq loadsuite`: the load figures of docs/RELIABILITY.md, measured and written by tool.

Each suite starts its own loopback server(s) as subprocesses (`python -m server` with
TRDQ_* settings), waits for /readyz, drives them with `trdq loadtest`'s closed loop, and
replaces its own section of the markdown file (between ``<!-- loadsuite NAME -->``
markers), with the date, the machine, its load average and the command:

- ``concurrency``: one server; concurrency 1, 4 and 16; then the server's resident memory
  before and after ``--soak`` more requests (a leak check);
- ``batching``: TRDQ_MAX_BATCH=1 against TRDQ_MAX_BATCH=N at concurrency 16, the two
  servers' runs interleaved so background load hits both alike;
- ``devices``: TRDQ_DEVICES=first device against all of ``--devices`` (one engine worker
  per device; ``--worker-mode``, default process: one process per device), at the same
  load per device (``--concurrency`` clients per device), both servers warmed up on the
  shapes the load brings (TRDQ_WARMUP_*: the request size and steps, batch sizes 1 to
  TRDQ_MAX_BATCH); the section says whether issue 28's target is met (speed-up >= 1.8x
  with two devices, p95 not above one device's).

    trdq loadsuite concurrency --env TRDQ_QUANT=w8a8 --out-md docs/RELIABILITY.md
    trdq loadsuite devices --devices cuda:0,cuda:1 --json devices.json
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx

from trdq.machine import cpu_isa, cpu_model
from trdq.tools import loadtest

logger = logging.getLogger(__name__)

SUITES = ("concurrency", "batching", "devices")


@contextmanager
def local_server(env: dict[str, str], port: int, log_path: Path | None, ready_timeout_s: float):
    """A `python -m server` subprocess on 127.0.0.1:port; yields (url, pid)."""
    full_env = {**os.environ, **env, "TRDQ_HOST": "127.0.0.1", "TRDQ_PORT": str(port)}
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 (closed below)
    process = subprocess.Popen([sys.executable, "-m", "server"], env=full_env,
                               stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode} during start-up "
                                   f"(log: {log_path})")
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready after {ready_timeout_s:.0f} s")
            time.sleep(0.5)
        yield url, process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
        if not isinstance(log, int):  # a file opened above, not subprocess.DEVNULL
            log.close()


def resident_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def drive(url: str, args: argparse.Namespace, concurrency: int, requests: int) -> dict:
    """One closed-loop run (trdq loadtest) against ``url``; returns its JSON summary."""
    load_args = loadtest.add_arguments(argparse.ArgumentParser()).parse_args([
        "--url", url, "--endpoint", args.endpoint, "--concurrency", str(concurrency),
        "--requests", str(requests), "--steps", str(args.steps),
        "--max-seconds", str(args.max_seconds),
        *(["--width", str(args.width), "--height", str(args.height)] if args.width else []),
    ])
    result = asyncio.run(loadtest.run_load(load_args))
    summary = result.summary()
    for sample in result.error_samples:
        logger.warning("error sample: %s", sample)
    logger.info("c=%d: %s", concurrency, json.dumps(summary))
    return summary


def base_env(args: argparse.Namespace) -> dict[str, str]:
    env = {"TRDQ_MAX_QUEUE": "64", "TRDQ_LOG_LEVEL": "warning"}
    if args.endpoint == "image":
        env["TRDQ_VIDEO_MODEL"] = "none"
    else:
        env["TRDQ_MODEL"] = "none"
    for item in args.env:
        key, _, value = item.partition("=")
        env[key] = value
    return env


def run_concurrency(args: argparse.Namespace) -> dict:
    runs: list[dict] = []
    memory: dict[str, Any] = {}
    with local_server(base_env(args), args.port, args.log, args.ready_timeout) as (url, pid):
        drive(url, args, 1, 2)  # warm-up, not reported
        for concurrency in (1, 4, 16):
            runs.append(drive(url, args, concurrency, args.requests * max(1, concurrency // 2)))
        if args.soak:
            memory["rss_before_bytes"] = resident_bytes(pid)
            memory["soak"] = drive(url, args, 4, args.soak)
            memory["rss_after_bytes"] = resident_bytes(pid)
    return {"runs": runs, "memory": memory}


def _measure(args: argparse.Namespace, variants: dict[str, dict[str, str]],
             scale: int = 1) -> dict[str, dict]:
    """Runs of each variant at ``--concurrency`` x ``scale`` clients, interleaved in rounds
    (servers stay up)."""
    names = list(variants)
    results: dict[str, list[dict]] = {name: [] for name in names}
    concurrency = args.concurrency * scale
    with _servers(args, variants) as urls:
        for url in urls.values():
            drive(url, args, 4 * scale, 4 * scale)  # warm-up
        for _ in range(args.rounds):
            for name in names:
                results[name].append(drive(urls[name], args, concurrency,
                                           args.requests * 4 * scale))
    for runs in results.values():
        for run in runs:
            run["concurrency"] = concurrency
    return {name: _merge(runs) for name, runs in results.items()}


def _with_speedups(results: dict[str, dict]) -> dict[str, dict]:
    """Each variant's throughput over the first variant's, as ``speedup``."""
    base = next(iter(results.values()))["throughput_rps"]
    for result in results.values():
        result["speedup"] = round(result["throughput_rps"] / base, 3) if base else None
    return results


@contextmanager
def _servers(args: argparse.Namespace, variants: dict[str, dict[str, str]]):
    with ExitStack() as stack:
        urls = {}
        for offset, (name, extra) in enumerate(variants.items()):
            url, _ = stack.enter_context(local_server(
                {**base_env(args), **extra}, args.port + offset, args.log, args.ready_timeout))
            urls[name] = url
        yield urls


def _merge(runs: list[dict]) -> dict:
    """Rounds of one variant: summed counts, mean throughput, median percentiles."""
    def median(key: str) -> float:
        values = sorted(run[key] for run in runs)
        return values[len(values) // 2]

    return {
        "rounds": len(runs),
        "requests": sum(run["requests"] for run in runs),
        "ok": sum(run["ok"] for run in runs),
        "rejected_429": sum(run["rejected_429"] for run in runs),
        "errors": sum(run["errors"] for run in runs),
        "throughput_rps": round(sum(run["throughput_rps"] for run in runs) / len(runs), 4),
        "p50_s": median("p50_s"), "p95_s": median("p95_s"), "p99_s": median("p99_s"),
        "concurrency": runs[0].get("concurrency"),
    }


def run_batching(args: argparse.Namespace) -> dict:
    variants = {"max_batch=1": {"TRDQ_MAX_BATCH": "1"},
                f"max_batch={args.max_batch}": {"TRDQ_MAX_BATCH": str(args.max_batch),
                                                "TRDQ_BATCH_WINDOW_MS": "20"}}
    return {"variants": variants, "results": _with_speedups(_measure(args, variants))}


#: issue 28: two devices serve at least this many times one device's throughput
DEVICES_TARGET_SPEEDUP = 1.8


def devices_env(args: argparse.Namespace) -> dict[str, str]:
    """What both servers of the devices suite run with, beyond --env: the worker mode, and
    a warm-up of the shapes the load brings (unless --env sets them)."""
    max_batch = base_env(args).get("TRDQ_MAX_BATCH", "4")
    env = {"TRDQ_WORKER_MODE": args.worker_mode, "TRDQ_WARMUP_STEPS": str(args.steps),
           "TRDQ_WARMUP_BATCH_SIZES": ",".join(str(b) for b in range(1, int(max_batch) + 1))}
    if args.width:
        env["TRDQ_WARMUP_SIZE"] = f"{args.width}x{args.height}"
    return {key: value for key, value in env.items() if key not in base_env(args)}


def run_devices(args: argparse.Namespace) -> dict:
    devices = [d.strip() for d in args.devices.split(",") if d.strip()]
    if len(devices) < 2:
        raise SystemExit("--devices must name at least two devices")
    # The servers run one after the other: both would otherwise share the first device.
    # Each gets --concurrency clients per device: the same load per device.
    results = {}
    for name, device_list in ((f"1 device ({devices[0]})", devices[:1]),
                              (f"{len(devices)} devices", devices)):
        env = {**devices_env(args), "TRDQ_DEVICES": ",".join(device_list)}
        results.update(_measure(args, {name: env}, scale=len(device_list)))
    results = _with_speedups(results)
    one, many = results.values()
    target = {
        "speedup_min": DEVICES_TARGET_SPEEDUP if len(devices) == 2 else None,
        "speedup_met": len(devices) == 2 and (many["speedup"] or 0) >= DEVICES_TARGET_SPEEDUP,
        "p95_met": many["p95_s"] <= one["p95_s"],
    }
    return {"devices": devices, "worker_mode": args.worker_mode, "results": results,
            "target": target}


def processor_kind() -> str:
    """GPU or CPU: part of a section's title, so CPU and GPU figures live side by side."""
    import torch

    return "GPU" if torch.cuda.is_available() else "CPU"


def machine_description() -> str:
    import torch

    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        gpus = f"{len(names)}x {names[0]}" if len(set(names)) == 1 else ", ".join(names)
        return f"{gpus}, torch {torch.__version__}"
    return f"CPU {cpu_model()} ({cpu_isa()}), {os.cpu_count()} cores, torch {torch.__version__}"


def render(suite: str, data: dict, args: argparse.Namespace, command: str,
           load_before: tuple[float, float, float]) -> str:
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    env = {**base_env(args), **(devices_env(args) if suite == "devices" else {})}
    settings = " ".join(f"{key}={value}" for key, value in env.items())
    conditions = (f"Measured {now} on {machine_description()}; load average before "
                  f"{load_before[0]:.2f} (1 min); {args.steps} steps per request, "
                  f"{size_label(args)}, model defaults otherwise; server settings {settings}. Written by:")
    lines = [
        f"<!-- loadsuite {suite} -->",
        f"### `{suite}` ({args.endpoint}, {size_label(args)}, {processor_kind()}"
        + (f", {args.worker_mode} workers)" if suite == "devices" else ")"),
        "",
        conditions,
        "",
        "```",
        command,
        "```",
        "",
    ]
    header = "| {} | requests | ok | 429 | errors | throughput (req/s) | p50 s | p95 s | p99 s |"
    if suite == "concurrency":
        lines += [header.format("concurrency"), "|---|---|---|---|---|---|---|---|---|"]
        for run in data["runs"]:
            lines.append(_row(str(run["concurrency"]), run))
        memory = data.get("memory")
        if memory:
            before, after = memory["rss_before_bytes"], memory["rss_after_bytes"]
            soak = memory["soak"]
            lines += ["", (f"Resident memory of the server before / after {soak['requests']} "
                           f"more requests (concurrency 4, {soak['errors']} errors): "
                           f"{before / 2**20:.1f} MiB / {after / 2**20:.1f} MiB "
                           f"({100 * (after - before) / before:+.2f}%).")]
    else:
        lines += [header.format("server").replace("| p99 s |", "| p99 s | speed-up |"),
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for name, result in data["results"].items():
            lines.append(_row(name, result) + f" {result['speedup']:.2f}x |")
        rounds = next(iter(data["results"].values()))["rounds"]
        order = "interleaved" if suite == "batching" else "one server after the other"
        load = (f"Concurrency {args.concurrency} per device"
                if suite == "devices" else f"Concurrency {args.concurrency}")
        lines += ["", (f"{load}; {rounds} round(s) per server, {order}; throughput is "
                       "the mean over rounds, percentiles the median.")]
        target = data.get("target")
        if target and target["speedup_min"] is not None:
            met = target["speedup_met"] and target["p95_met"]
            lines += ["", (f"Target (issue 28: >= {target['speedup_min']}x with two devices, "
                           f"p95 not above one device's at the same load per device): "
                           f"{'met' if met else 'not met'} (speed-up "
                           f"{'met' if target['speedup_met'] else 'not met'}, p95 "
                           f"{'met' if target['p95_met'] else 'not met'}).")]
    lines += [f"<!-- /loadsuite {suite} -->"]
    return "\n".join(lines)


def size_label(args: argparse.Namespace) -> str:
    return f"{args.width}x{args.height}" if args.width else "model default size"


def _row(label: str, run: dict) -> str:
    return (f"| {label} | {run['requests']} | {run['ok']} | {run['rejected_429']} | "
            f"{run['errors']} | {run['throughput_rps']:.3f} | {run['p50_s']:.3f} | "
            f"{run['p95_s']:.3f} | {run['p99_s']:.3f} |")


def update_markdown(path: Path, suite: str, section: str, heading: str) -> None:
    """Replace this suite's section for this endpoint, or append it."""
    text = path.read_text() if path.exists() else "# Reliability\n"
    start_marker = section.splitlines()[0]
    title = section.splitlines()[1]
    end_marker = f"<!-- /loadsuite {suite} -->"
    search_from = 0
    while True:
        start = text.find(start_marker, search_from)
        if start < 0:
            break
        end = text.find(end_marker, start)
        if end < 0:
            break
        if text[start:end].splitlines()[1] == title:
            text = text[:start] + section + text[end + len(end_marker):]
            path.write_text(text)
            return
        search_from = end
    if heading not in text:
        text = text.rstrip("\n") + f"\n\n{heading}\n"
    path.write_text(text.rstrip("\n") + "\n\n" + section + "\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trdq loadsuite", description=__doc__.split("\n\n")[0])
    parser.add_argument("suite", choices=SUITES)
    parser.add_argument("--endpoint", choices=sorted(loadtest.ENDPOINTS), default="image")
    parser.add_argument("--env", action="append", default=[], metavar="TRDQ_X=VALUE",
                        help="server setting for every server of the suite (repeatable)")
    parser.add_argument("--requests", type=int, default=8,
                        help="requests per run at concurrency 1 (more at higher ones)")
    parser.add_argument("--soak", type=int, default=0,
                        help="concurrency suite: requests of the memory check (0: skip)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--width", type=int, default=None, help="request size (with --height)")
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--max-batch", type=int, default=4)
    parser.add_argument("--devices", default="cuda:0,cuda:1")
    parser.add_argument("--worker-mode", choices=("process", "thread"), default="process",
                        help="devices suite: TRDQ_WORKER_MODE of both servers")
    parser.add_argument("--concurrency", type=int, default=16,
                        help="clients of the batching suite; per device in the devices suite")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--port", type=int, default=8310)
    parser.add_argument("--max-seconds", type=float, default=600.0, help="bound per run")
    parser.add_argument("--ready-timeout", type=float, default=1800.0)
    parser.add_argument("--log", type=Path, default=None, help="append the servers' logs here")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--out-md", type=Path, default=None,
                        help="Markdown to update, e.g. docs/RELIABILITY.md (default: none)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if (args.width is None) != (args.height is None):
        raise SystemExit("--width and --height go together")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    load_before = os.getloadavg()
    runners = {"concurrency": run_concurrency, "batching": run_batching, "devices": run_devices}
    data = runners[args.suite](args)
    data.update(suite=args.suite, endpoint=args.endpoint, machine=machine_description(),
                load_average_before=load_before[0])
    if args.json:
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    print(json.dumps(data))
    if args.out_md:
        command = "trdq loadsuite " + shlex.join(argv)
        update_markdown(args.out_md, args.suite, render(args.suite, data, args, command, load_before),
                        "## Load figures (written by `trdq loadsuite`)")
    errors = sum(r["errors"] for r in data.get("runs", [])) + sum(
        r["errors"] for r in data.get("results", {}).values())
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
