"""Benchmark of the Python package (issue #15); see docs/PERFORMANCE.md, "Python package".

Starts a private redis-server (AOF off) on a free loopback port in a temporary directory and
measures, in one run on that server:

1. awaited ``StateManager.update_stroke_progress`` from asyncio, p50/p99, against the same call
   made the old manager's way with plain redis-py asyncio (HGET, modify, HSET, XADD, PUBLISH):
   the ratio at p50 (target >= 3x);
2. ``Producer.update_stroke_progress`` called from a Python control loop that sleeps to each
   burst's deadline: per-call p50/p99/max (target p99 <= 10 us) with the default wake (the
   writer awake when a steady loop's burst is due), the same from a loop that spins on the
   clock between bursts instead of sleeping (holding one of the cores), polled every 100 us
   (``poll_interval_us=100``), and with a second Python thread spinning meanwhile; and the
   floor: a call that does nothing, timed in the same sleeping loop just before (its burst's first
   call is what any call costs after a sleep);
3. sustained updates/s from one Python thread through the producer, counted until Redis has
   acknowledged all of them (target >= 30,000/s), with the drop count (must be 0).

Build the wheel in release first (``maturin build --release``) and install it into a venv with
redis-py; counts are bounded, everything stays on loopback. Usage:

    python bench.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PrivateRedis:
    """redis-server on 127.0.0.1, in a temporary directory, stopped at the end."""

    def __enter__(self) -> "PrivateRedis":
        binary = shutil.which("redis-server")
        if binary is None:
            sys.exit("redis-server is not installed; run scripts/install-deps.sh")
        self.dir = tempfile.mkdtemp(prefix="tatbot-py-bench-")
        self.port = free_port()
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", self.dir],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.02)
        self.__exit__()
        sys.exit("redis-server did not answer PING within 10 s")

    def __exit__(self, *exc) -> None:
        self.process.kill()
        self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def percentile(samples, fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def old_manager_update(client, session_id: str, stroke_idx: int, pose_idx: int) -> None:
    """What the old Python manager did per update: four round trips, no transaction."""
    key = f"stroke:progress:{session_id}"
    raw = await client.hget(key, "progress")
    progress = json.loads(raw)
    now = datetime.now(timezone.utc).replace(tzinfo=None).isoformat()
    progress.update(timestamp=now, stroke_idx=stroke_idx, pose_idx=pose_idx, stroke_description_l="l", stroke_description_r="r")
    await client.hset(key, "progress", json.dumps(progress, separators=(",", ":")))
    await client.xadd(
        f"stream:stroke_history:{session_id}",
        {"stroke_idx": str(stroke_idx), "pose_idx": str(pose_idx), "description_l": "l", "description_r": "r", "node_id": "bench"},
        maxlen=10000,
        approximate=True,
    )
    event = {
        "type": "progress_update",
        "session_id": session_id,
        "node_id": "bench",
        "stroke_idx": stroke_idx,
        "pose_idx": pose_idx,
        "total_strokes": progress["total_strokes"],
        "stroke_length": progress["stroke_length"],
        "description_l": "l",
        "description_r": "r",
        "timestamp": now,
    }
    await client.publish("stroke:events:progress", json.dumps(event))


async def awaited_section(port: int, count: int) -> dict:
    import redis.asyncio

    from tatbot_state import StateManager

    state = StateManager(redis_host="127.0.0.1", redis_port=port, node_id="bench")
    client = redis.asyncio.Redis(host="127.0.0.1", port=port)
    ours, theirs = [], []
    async with state:
        ours_session = await state.start_stroke_session(1000, 1000, "bench")
        theirs_session = await state.start_stroke_session(1000, 1000, "bench-baseline")
        warmup = min(200, count // 10)
        # Interleaved, so both see the same machine load at the same moment.
        for i in range(count + warmup):
            stroke_idx, pose_idx = divmod(i, 1000)
            started = time.perf_counter()
            await state.update_stroke_progress(stroke_idx, pose_idx, "l", "r", session_id=ours_session)
            middle = time.perf_counter()
            await old_manager_update(client, theirs_session, stroke_idx, pose_idx)
            ended = time.perf_counter()
            if i >= warmup:
                ours.append(middle - started)
                theirs.append(ended - middle)
    await client.aclose()
    return {
        "count": count,
        "ours_p50_us": statistics.median(ours) * 1e6,
        "ours_p99_us": percentile(ours, 0.99) * 1e6,
        "redis_py_p50_us": statistics.median(theirs) * 1e6,
        "redis_py_p99_us": percentile(theirs, 0.99) * 1e6,
        "ratio_p50": statistics.median(theirs) / statistics.median(ours),
    }


def wait_until(deadline: float, spin: bool) -> None:
    """Waits for ``deadline`` (``time.perf_counter``): asleep, as a control loop waits for its
    next tick, or spinning on the clock, which holds one of the machine's cores."""
    if spin:
        while time.perf_counter() < deadline:
            pass
        return
    left = deadline - time.perf_counter()
    if left > 0:
        time.sleep(left)


def call_section(state, calls: int, poll_interval_us=None, busy_thread: bool = False, spin: bool = False) -> dict:
    """Producer calls from a Python control loop, bursts of 10 per millisecond as a loop
    driving both arms would make them, each burst at its own deadline, the time to it slept
    (as the Rust bench's control loop does), or with ``spin`` busy-waited; with
    ``busy_thread``, a second Python thread spins meanwhile (a GUI or a logger wanting the
    GIL)."""
    stop = threading.Event()

    def hog() -> None:
        while not stop.is_set():
            pass

    spinner = threading.Thread(target=hog, daemon=True)
    if busy_thread:
        spinner.start()
    producer = state.producer(poll_interval_us=poll_interval_us)
    producer.start_stroke_session(1000, 1000, "bench-calls")
    clock = time.perf_counter_ns
    durations = []
    # Bursts of 10 calls per millisecond, as a control loop driving both arms would.
    deadline = time.perf_counter()
    for burst in range(calls // 10):
        wait_until(deadline, spin)
        deadline += 0.001
        for pose in range(10):
            started = clock()
            producer.update_stroke_progress(burst % 1000, pose, "l", "r")
            durations.append(clock() - started)
    stop.set()
    if busy_thread:
        spinner.join()
    wakes = producer.wake_stats()
    producer.flush(60)
    producer.close(10)
    # Each burst's first call, after the wait, against the other nine.
    first = durations[::10]
    rest = [duration for index, duration in enumerate(durations) if index % 10]
    return {
        "count": len(durations),
        "poll_interval_us": poll_interval_us,
        "busy_thread": busy_thread,
        "spin": spin,
        "p50_us": statistics.median(durations) / 1000,
        "p99_us": percentile(durations, 0.99) / 1000,
        "p999_us": percentile(durations, 0.999) / 1000,
        "max_us": max(durations) / 1000,
        "first_p50_us": statistics.median(first) / 1000,
        "first_p90_us": percentile(first, 0.9) / 1000,
        "rest_p99_us": percentile(rest, 0.99) / 1000,
        "wakes": wakes,
    }


def floor_section(calls: int) -> dict:
    """The machine's floor: a call that does nothing (``len(())``), timed in the same loop as
    the producer's default calls, just before them. Its p99 is what a loaded machine adds to
    any call by preempting the Python thread, whatever the call does; its burst's first call is
    what any call costs after the loop slept (cold caches), the floor of the producer's."""
    clock = time.perf_counter_ns
    durations = []
    empty = ()
    deadline = time.perf_counter()
    for _ in range(calls // 10):
        wait_until(deadline, spin=False)
        deadline += 0.001
        for _ in range(10):
            started = clock()
            len(empty)
            durations.append(clock() - started)
    first = durations[::10]
    return {
        "count": len(durations),
        "first_p50_us": statistics.median(first) / 1000,
        "first_p90_us": percentile(first, 0.9) / 1000,
        "p50_us": statistics.median(durations) / 1000,
        "p99_us": percentile(durations, 0.99) / 1000,
        "p999_us": percentile(durations, 0.999) / 1000,
        "max_us": max(durations) / 1000,
    }


def producer_sections(port: int, calls: int, sustained: int) -> dict:
    from tatbot_state import StateManager

    StateManager.reset_instance()
    state = StateManager(redis_host="127.0.0.1", redis_port=port, node_id="bench")
    asyncio.run(state.connect())
    floor = floor_section(calls)
    call_figures = [
        call_section(state, calls),
        call_section(state, calls, spin=True),
        call_section(state, calls, poll_interval_us=100),
        call_section(state, calls, busy_thread=True),
    ]
    producer = state.producer(max_queued=max(sustained, 100_000) + 1)
    producer.start_stroke_session(1000, 1000, "bench-producer")
    started = time.perf_counter()
    for i in range(sustained):
        producer.update_stroke_progress(i // 1000 % 1000, i % 1000, "l", "r")
    queued = time.perf_counter()
    producer.flush(120)
    acknowledged = time.perf_counter()
    stats = producer.stats()
    producer.close(10)
    return {
        "floor": floor,
        "calls": call_figures,
        "sustained": {
            "count": sustained,
            "queue_rate_per_s": sustained / (queued - started),
            "acknowledged_per_s": sustained / (acknowledged - started),
            "dropped": stats["dropped"],
            "rejected": stats["rejected"],
        },
    }


def machine() -> dict:
    load = os.getloadavg()
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_avg_1_5_15": [round(value, 2) for value in load],
        "redis": subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split()[2],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts: proves the bench works")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    awaited_count, calls, sustained = (200, 2_000, 10_000) if args.quick else (5_000, 20_000, 100_000)
    with PrivateRedis() as redis_server:
        result = {"machine_before": machine()}
        result["awaited"] = asyncio.run(awaited_section(redis_server.port, awaited_count))
        result.update(producer_sections(redis_server.port, calls, sustained))
        result["machine_after"] = machine()
    if args.json:
        print(json.dumps(result, indent=2))
        return
    awaited = result["awaited"]
    print(f"machine: {result['machine_before']}")
    print(f"1. awaited update_stroke_progress ({awaited['count']}): p50 {awaited['ours_p50_us']:.0f} us, p99 {awaited['ours_p99_us']:.0f} us")
    print(f"   old manager on redis-py asyncio (HGET+HSET+XADD+PUBLISH): p50 {awaited['redis_py_p50_us']:.0f} us, p99 {awaited['redis_py_p99_us']:.0f} us")
    print(f"   ratio at p50: {awaited['ratio_p50']:.1f}x faster (target >= 3x)")
    for figures in result["calls"]:
        wake = "default wake" if figures["poll_interval_us"] is None else f"polled every {figures['poll_interval_us']} us"
        if figures["busy_thread"]:
            wake += ", a second Python thread busy"
        if figures["spin"]:
            wake += ", the loop spinning between bursts"
        print(
            f"2. producer call, writer {wake} ({figures['count']}, bursts of 10 per ms): p50 {figures['p50_us']:.2f} us, "
            f"p99 {figures['p99_us']:.2f} us (target <= 10 us), p99.9 {figures['p999_us']:.2f} us, max {figures['max_us']:.0f} us"
        )
        wakes = figures["wakes"]
        print(
            f"   a burst's first call p50 {figures['first_p50_us']:.2f} us, p90 {figures['first_p90_us']:.2f} us; the other calls "
            f"p99 {figures['rest_p99_us']:.2f} us; writer woken by calls {wakes['call_wakes']}, bursts anticipated "
            f"{wakes['anticipated']}, missed {wakes['missed']}, pacer late {wakes['late']}"
        )
    figures = result["floor"]
    print(
        f"   the floor, len(()) timed in the same loop just before: p50 {figures['p50_us']:.2f} us, p99 {figures['p99_us']:.2f} us, "
        f"p99.9 {figures['p999_us']:.2f} us, max {figures['max_us']:.0f} us; a burst's first call p50 {figures['first_p50_us']:.2f} us, "
        f"p90 {figures['first_p90_us']:.2f} us"
    )
    figures = result["sustained"]
    print(
        f"3. sustained from one thread ({figures['count']}): {figures['acknowledged_per_s']:,.0f} updates/s acknowledged "
        f"(target >= 30,000/s), queued at {figures['queue_rate_per_s']:,.0f}/s, dropped {figures['dropped']}, rejected {figures['rejected']}"
    )
    print(f"load after: {result['machine_after']['load_avg_1_5_15']}")


if __name__ == "__main__":
    main()
