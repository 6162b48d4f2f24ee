"""Point 2 and call pattern (a): a stroke tool driving a session from a synchronous 30 Hz loop
through ``state.producer()``; and the producer riding out Redis killed (-9) and restarted."""

from __future__ import annotations

import asyncio
import os
import statistics
import threading
import time

import pytest

from conftest import wait_until
from tatbot_state import NodeHealth, RobotState, StateManager

RATE_HZ = 30


def connected(server, node_id: str = "hog") -> StateManager:
    state = StateManager(redis_host=server.host, redis_port=server.port, node_id=node_id)
    asyncio.run(state.connect())
    return state


def history(raw, session_id: str):
    return [(int(fields["stroke_idx"]), int(fields["pose_idx"]), fields["description_l"]) for _, fields in raw.xrange(f"stream:stroke_history:{session_id}")]


def run_30hz(producer, poses, on_pose=None):
    """The stroke tool's loop: one update per pose at 30 Hz; answers each call's duration."""
    durations = []
    next_tick = time.monotonic()
    for index, (stroke_idx, pose_idx) in enumerate(poses):
        started = time.perf_counter()
        producer.update_stroke_progress(stroke_idx, pose_idx, f"d{index}", "r")
        durations.append(time.perf_counter() - started)
        if on_pose is not None:
            on_pose(index)
        next_tick += 1 / RATE_HZ
        time.sleep(max(0.0, next_tick - time.monotonic()))
    return durations


def test_pattern_a_stroke_tool_at_30_hz(redis_server, raw):
    """Pattern (a): start, every pose from a plain 30 Hz loop, end; each call returns without
    waiting on Redis and every update is stored once, in order."""
    state = connected(redis_server)
    with state.producer() as producer:
        session_id = producer.start_stroke_session(total_strokes=3, stroke_length=10, scene_name="tool")
        assert producer.session_id == session_id
        poses = [(stroke, pose) for stroke in range(3) for pose in range(10)]
        durations = run_30hz(producer, poses)
        producer.update_robot_state(RobotState(node_id="hog", current_pose="done"))
        producer.update_node_health(NodeHealth(node_id="hog", cpu_percent=3.0))
        producer.report_error("arm", "recoverable", {"stroke": 2})
        producer.end_stroke_session()
        producer.flush(10)
        assert producer.stats()["dropped"] == 0
        wakes = producer.wake_stats()
    assert statistics.median(durations) < 0.001, durations
    assert set(wakes) == {"call_wakes", "anticipated", "missed", "late", "lead_us"}, wakes
    # Some call found the idle writer parked and woke it: at least the first, before any rhythm.
    assert wakes["call_wakes"] >= 1, wakes
    assert history(raw, session_id) == [(s, p, f"d{i}") for i, (s, p) in enumerate(poses)]
    progress = asyncio.run(state.get_stroke_progress(session_id))
    assert (progress.stroke_idx, progress.pose_idx, progress.is_executing) == (2, 9, False)
    assert asyncio.run(state.get_robot_state()).current_pose == "done"
    assert asyncio.run(state.get_node_health()).cpu_percent == 3.0
    assert raw.xlen("tatbot:errors") == 1


def test_redis_killed_and_restarted_during_the_loop(persistent_redis, tmp_path):
    """Robustness: Redis is killed (-9) and restarted twice during pattern (a); the loop never
    blocks or raises, and afterwards every update is stored exactly once and the session ended."""
    import redis

    server = persistent_redis
    state = connected(server)
    producer = state.producer()
    session_id = producer.start_stroke_session(3, 30, "crash")
    poses = [(stroke, pose) for stroke in range(3) for pose in range(30)]

    def crash(index: int) -> None:
        if index in (25, 55):
            server.kill()
        if index in (35, 65):
            server.restart()

    durations = run_30hz(producer, poses, on_pose=crash)
    producer.end_stroke_session(session_id)
    producer.flush(30)
    stats = producer.stats()
    producer.close(10)
    assert stats["dropped"] == 0 and stats["rejected"] == 0, stats
    assert stats["restarts"] >= 2, stats
    assert max(durations) < 0.05, max(durations)
    raw = redis.Redis(host=server.host, port=server.port, decode_responses=True)
    assert history(raw, session_id) == [(s, p, f"d{i}") for i, (s, p) in enumerate(poses)]
    # The manager's own connection reconnects on use: a call may see the outage once.
    assert wait_until(lambda: _reads(state, session_id), timeout=10)
    progress = asyncio.run(state.get_stroke_progress(session_id))
    assert (progress.stroke_idx, progress.pose_idx, progress.is_executing) == (2, 29, False)


def _reads(state, session_id) -> bool:
    try:
        return asyncio.run(state.get_stroke_progress(session_id)) is not None
    except ConnectionError:
        return False


def test_flush_releases_the_gil(redis_server):
    """``flush`` waits with the GIL released: another Python thread keeps running meanwhile."""
    state = connected(redis_server)
    producer = state.producer()
    producer.start_stroke_session(1, 1000, "gil")
    redis_server.kill()
    for pose in range(100):
        producer.update_stroke_progress(0, pose)
    ticks = 0
    stop = threading.Event()

    def count() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1

    counter = threading.Thread(target=count)
    counter.start()
    before = ticks
    with pytest.raises(TimeoutError, match="did not answer producer flush"):
        producer.flush(0.5)
    during = ticks - before
    stop.set()
    counter.join()
    assert during > 10_000, during


def test_polled_writer_stores_everything(redis_server, raw):
    """With ``poll_interval_us`` the writer is polled instead of woken, and stores the same."""
    state = connected(redis_server)
    with state.producer(poll_interval_us=100) as producer:
        session_id = producer.start_stroke_session(1, 200, "polled")
        for pose in range(200):
            producer.update_stroke_progress(0, pose, f"d{pose}", "r")
        producer.flush(10)
    assert history(raw, session_id) == [(0, pose, f"d{pose}") for pose in range(200)]


def test_producer_needs_a_session(redis_server):
    """A progress update without a session says how to get one."""
    producer = connected(redis_server).producer()
    with pytest.raises(ValueError, match="no current stroke session; hint: call start_stroke_session"):
        producer.update_stroke_progress(0, 0)


def test_runtime_threads_do_not_preempt_the_caller(redis_server):
    """The shared runtime's threads (the producer's writer among them) run as SCHED_BATCH, so
    waking one never preempts the Python thread that queued the work."""
    state = connected(redis_server)
    producer = state.producer()
    producer.start_stroke_session(1, 1, "policy")
    tids = []
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/comm") as comm:
            if comm.read().strip() == "tatbot-state":
                tids.append(int(tid))
    producer.close()
    assert tids, "no runtime thread named tatbot-state"
    assert {os.sched_getscheduler(tid) for tid in tids} == {os.SCHED_BATCH}


class Text(str):
    """A str subclass, as some libraries hand out, whose ``str()`` is not its text."""

    def __str__(self) -> str:
        return "not the text"


def test_descriptions_are_stored_as_given_on_every_call(redis_server, raw):
    """The producer keeps the last description strings to skip converting them again: whatever
    objects a loop passes (the same ones, equal new ones, other values, a str subclass, non-ASCII,
    long ones, none), each update stores its own text; bad ones raise and leave the next call
    unharmed."""
    state = connected(redis_server)
    with state.producer(poll_interval_us=100) as producer:
        assert producer.wake_stats() == {"call_wakes": 0, "anticipated": 0, "missed": 0, "late": 0, "lead_us": 0}
        session_id = producer.start_stroke_session(1, 1000, "descriptions")
        left, long_text = "ab", "é→" * 200
        calls = [
            (left, "r"),
            (left, "r"),
            ("".join(["a", "b"]), "r"),  # equal to the kept one, another object
            ("b", "r"),
            (left, "r"),
            (Text("sub"), "r"),
            (Text("sub"), "r"),
            ("é→ ☃", "r"),
            (long_text, long_text),
            (long_text, long_text),
            (None, None),
        ]
        # Strings that live for one call only: each new one may take a freed one's address.
        calls += [(f"t{index:03}", "r") for index in range(200)]
        for pose, (text_l, text_r) in enumerate(calls):
            if text_l is None:
                producer.update_stroke_progress(0, pose)
            else:
                producer.update_stroke_progress(0, pose, text_l, text_r)
        producer.update_stroke_progress(0, len(calls), left, "r")  # kept again
        for kind, message, bad_l, bad_r in [
            (TypeError, "stroke_description_l", None, "r"),
            (TypeError, "stroke_description_l", 5, "r"),
            (ValueError, "left description is 5000 bytes", "x" * 5000, "r"),
            (UnicodeEncodeError, "surrogates not allowed", "\ud800", "r"),
            (UnicodeEncodeError, "surrogates not allowed", left, "\ud800"),
        ]:
            with pytest.raises(kind, match=message):
                producer.update_stroke_progress(0, 999, bad_l, bad_r)
        producer.update_stroke_progress(0, len(calls) + 1, left, "r")  # kept, after the errors
        producer.update_stroke_progress(0, len(calls) + 2, left, "after")
        producer.flush(10)
    stored = [(fields["description_l"], fields["description_r"]) for _, fields in raw.xrange(f"stream:stroke_history:{session_id}")]
    expected = [(text_l or "", text_r or "") for text_l, text_r in calls] + [(left, "r"), (left, "r"), (left, "after")]
    assert stored == expected
