#!/usr/bin/env python3
"""FastAGI load benchmark: N concurrent fake-Asterisk calls through the demo flow.

One load generator (this process: fake Asterisk calls, zero-delay prompts)
drives three servers in turn, each in its own process:

* ``ours``: ``ivr serve`` running the demo flow for real (engine, look-ups
  against the demo backend over HTTP, trail written to SQLite);
* ``bare``: a bare asyncio server that sends the same command sequence and
  does nothing else: the ceiling of this machine and this load generator;
* ``panoramisk``: the same command sequence from a minimal handler on
  panoramisk's FastAGI ``Application`` (what a user would otherwise start from).

Turnaround is measured at the generator: from writing a reply to receiving
the server's next command. It includes the generator's own scheduling delay,
which is the same for all three servers. Peak RSS is the server's VmHWM.

    .venv/bin/python bench/agi_load.py --concurrency 100 500 1000 --duration 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# verify, balance, back to the main menu, outages, goodbye: the same path at any hour
DEMO_KEYS = ["1", "1", "20240001#", "110105199003071239#", "1", "9", "3", "1"]
# The demo's outage message carries the time, so with call-time rendering on
# every call synthesises a new prompt (about 0.6 s of TTS, bench/prompts.py):
# off by default here, to measure the FastAGI server itself (--render to include it).
RENDER_DURING_CALLS = False


# --------------------------------------------------------------------------- servers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reference_commands() -> list[str]:
    """The command lines one demo call sends, recorded from our own server."""
    path = Path(tempfile.gettempdir()) / "ivr-bench-commands.json"
    return json.loads(path.read_text())


async def run_bare(port: int, commands: list[str]) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while (await reader.readline()).strip():
                pass
            for cmd in commands:
                writer.write(cmd.encode() + b"\n")
                line = await reader.readline()
                if not line:
                    break
                while line.startswith(b"HANGUP"):
                    line = await reader.readline()
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=2048)
    async with server:
        await server.serve_forever()


async def run_panoramisk(port: int, commands: list[str]) -> None:
    from panoramisk.fast_agi import Application

    app = Application()

    async def call(request) -> None:
        for cmd in commands:
            await request.send_command(cmd)

    app.add_route("demo_hotline", call)
    server = await asyncio.start_server(app.handler, "127.0.0.1", port, backlog=2048)
    async with server:
        await server.serve_forever()


def start_server(kind: str, port: int, workdir: Path, backend_url: str | None = None) -> subprocess.Popen:
    env = dict(os.environ, IVR_LOG_LEVEL="WARNING")
    if backend_url:
        env["IVR_BACKEND_URL"] = backend_url
    if kind == "backend":
        cmd = [sys.executable, "-m", "ivr.demo_backend", "--port", str(port)]
    elif kind == "ours":
        http = free_port()
        cmd = [sys.executable, "-m", "ivr.cli", "serve", "--agi-port", str(port), "--http-port", str(http),
               "--database-url", f"sqlite:///{workdir / f'bench-{port}.db'}", "--flows", str(ROOT / "flows")]
        env["IVR_RELOAD_INTERVAL"] = "0"
        if not RENDER_DURING_CALLS:
            env["IVR_PROMPT_RENDER_DURING_CALLS"] = "false"
    else:
        cmd = [sys.executable, __file__, "--serve", kind, "--port", str(port)]
    log = open(workdir / f"server-{kind}-{port}.log", "w")
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stderr=log, text=True)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as probe:
                # panoramisk's FastAGI handler spins forever, blocking its whole
                # event loop, on a connection that closes before a complete
                # environment block: send one
                probe.sendall(b"agi_network_script: probe\n\n")
            return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"{kind} server died: {(workdir / f'server-{kind}-{port}.log').read_text()}")
            time.sleep(0.1)
    raise RuntimeError(f"{kind} server did not start")


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# --------------------------------------------------------------------------- load
async def one_call(port: int, keys: list[str], pace: float = 0.0):
    from ivr.testing.callers import SimLikeCaller
    from ivr.testing.fake_asterisk import FakeAsterisk

    fake = FakeAsterisk("127.0.0.1", port, inputs=SimLikeCaller(keys), script="demo_hotline",
                        idle_timeout=60, connect_timeout=30, prompt_delay=pace)
    return await fake.run()


async def load(port: int, concurrency: int, duration: float, pace: float = 0.0) -> dict:
    turnarounds: list[float] = []
    commands = 0
    calls = 0
    errors = 0
    stop_at = time.perf_counter() + duration
    started = time.perf_counter()

    async def worker() -> None:
        nonlocal commands, calls, errors
        while time.perf_counter() < stop_at:
            try:
                result = await one_call(port, DEMO_KEYS, pace)
            except Exception:  # noqa: BLE001 - counted, reported
                errors += 1
                await asyncio.sleep(0.05)
                continue
            if not result.server_closed or result.errors:
                errors += 1
            calls += 1
            commands += len(result.commands)
            turnarounds.extend(result.turnarounds[1:])  # the first includes connection set-up

    # ramp up: zero-delay calls over about a second; paced calls spread over
    # one prompt's length, so they do not all ask at the same instant
    tasks = []
    for i in range(concurrency):
        tasks.append(asyncio.create_task(worker()))
        if pace:
            await asyncio.sleep(pace / concurrency)
        elif i % 50 == 49:
            await asyncio.sleep(0.05)
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - started
    turnarounds.sort()

    def pct(p: float) -> float:
        return turnarounds[min(len(turnarounds) - 1, int(p * len(turnarounds)))] * 1000 if turnarounds else float("nan")

    return {
        "calls": calls, "errors": errors, "calls_per_s": calls / elapsed, "commands_per_s": commands / elapsed,
        "p50_ms": pct(0.50), "p99_ms": pct(0.99), "commands_per_call": commands / calls if calls else 0,
    }


def record_commands(port: int) -> None:
    result = asyncio.run(one_call(port, DEMO_KEYS))
    path = Path(tempfile.gettempdir()) / "ivr-bench-commands.json"
    path.write_text(json.dumps(result.commands))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[100, 500, 1000])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load per run")
    parser.add_argument("--targets", nargs="+", default=["ours", "bare", "panoramisk"])
    parser.add_argument("--pace", type=float, default=0.0,
                        help="seconds each prompt plays (0: zero-delay saturation run; 2-3 is a real caller)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--render", action="store_true",
                        help="let the server render prompts with variables during calls (TTS per call)")
    parser.add_argument("--serve", choices=["bare", "panoramisk"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    global RENDER_DURING_CALLS
    RENDER_DURING_CALLS = args.render
    if args.serve:
        runner = run_bare if args.serve == "bare" else run_panoramisk
        asyncio.run(runner(args.port, reference_commands()))
        return 0

    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 2 sockets per call here, 2-3 in the server
    print(f"pace: {args.pace} s per prompt ({'paced callers' if args.pace else 'zero-delay saturation'}); "
          f"call-time prompt rendering {'on' if args.render else 'off'}")
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, {platform.platform()}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        # The business backend runs in its own process, as it would in production:
        # its work is not the IVR server's.
        backend_port = free_port()
        backend = start_server("backend", backend_port, workdir)
        backend_url = f"http://127.0.0.1:{backend_port}/demo-api"
        # record the command sequence of one demo call for the reference servers
        port = free_port()
        proc = start_server("ours", port, workdir, backend_url)
        try:
            record_commands(port)
        finally:
            proc.terminate()
            proc.wait(30)
        print(f"one demo call = {len(reference_commands())} AGI commands")
        for n in args.concurrency:
            for target in args.targets:
                port = free_port()
                proc = start_server(target, port, workdir, backend_url)
                try:
                    res = asyncio.run(load(port, n, args.duration, args.pace))
                    res.update(target=target, concurrency=n, rss_mb=peak_rss_mb(proc.pid))
                finally:
                    proc.terminate()
                    try:
                        proc.wait(30)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                rows.append(res)
                print(f"  {target:<11} N={n:<5} {res['calls_per_s']:8.1f} calls/s {res['commands_per_s']:9.0f} cmd/s "
                      f"p50 {res['p50_ms']:6.2f} ms p99 {res['p99_ms']:7.2f} ms RSS {res['rss_mb']:6.1f} MB "
                      f"errors {res['errors']}", flush=True)
        backend.terminate()
        backend.wait(30)
    print()
    header = ("| N | server | calls/s | AGI cmd/s | p50 ms | p99 ms | peak RSS MB | errors | "
              "vs bare | vs panoramisk |")
    print(header)
    print("|" + "---|" * 10)
    for row in rows:
        same = {r["target"]: r for r in rows if r["concurrency"] == row["concurrency"]}
        vb = row["commands_per_s"] / same["bare"]["commands_per_s"] if "bare" in same else float("nan")
        vp = row["commands_per_s"] / same["panoramisk"]["commands_per_s"] if "panoramisk" in same else float("nan")
        print(f"| {row['concurrency']} | {row['target']} | {row['calls_per_s']:.1f} | {row['commands_per_s']:.0f} | "
              f"{row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {row['rss_mb']:.1f} | {row['errors']} | "
              f"{vb:.2f} | {vp:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
