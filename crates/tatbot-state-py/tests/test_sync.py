"""Point 3 and call pattern (b): GUIs that run Redis work in a thread, with the blocking facade
or with ``asyncio.run`` around ``async with`` + ``async for subscribe_events``."""

from __future__ import annotations

import asyncio
import queue
import threading
import time

import pytest

from conftest import wait_until
from tatbot_state import RobotState, StateManager, sync
from test_api import OUTAGE_S


def numpat(raw) -> int:
    return int(raw.execute_command("PUBSUB", "NUMPAT"))


def test_pattern_b_gui_thread_with_reconnect(redis_server, raw):
    """Pattern (b): a GUI thread runs ``asyncio.run`` around ``async with`` and ``async for
    subscribe_events("stroke:events:*")``; Redis restarts and the same loop keeps receiving."""
    received: "queue.Queue[dict]" = queue.Queue()
    state = StateManager(redis_host=redis_server.host, redis_port=redis_server.port, node_id="gui")

    async def gui_loop():
        async with state:
            async for message in state.subscribe_events("stroke:events:*"):
                received.put(message)
                if message["data"].get("type") == "quit":
                    return

    thread = threading.Thread(target=asyncio.run, args=(gui_loop(),), daemon=True)
    thread.start()
    assert wait_until(lambda: numpat(raw) == 1)
    raw.publish("stroke:events:progress", '{"type": "progress_update", "session_id": "s", "node_id": "hog", "timestamp": "2026-11-25T17:15:37"}')
    first = received.get(timeout=10)
    assert first["channel"] == "stroke:events:progress" and first["pattern"] == "stroke:events:*"

    redis_server.restart()
    after = raw.__class__(host=redis_server.host, port=redis_server.port, decode_responses=True)
    assert wait_until(lambda: numpat(after) == 1, timeout=20), "the subscription did not come back"
    after.publish("stroke:events:session", '{"type": "note", "n": 2}')
    second = received.get(timeout=10)
    assert second["data"] == {"type": "note", "n": 2}
    after.publish("stroke:events:session", '{"type": "quit"}')
    thread.join(10)
    assert not thread.is_alive()


def test_blocking_facade_and_subscription(redis_server, raw):
    """``tatbot_state.sync.StateManager``: the same calls, blocking; its subscription iterates
    in a thread and ``close`` from another thread ends it."""
    with sync.StateManager(redis_host=redis_server.host, redis_port=redis_server.port, node_id="gui") as state:
        session_id = state.start_stroke_session(4, 4)
        state.update_stroke_progress(1, 3, "l", "r")
        assert state.get_stroke_progress(session_id).pose_idx == 3
        state.update_robot_state(RobotState(node_id="gui", current_pose="home"))
        assert state.get_robot_state().current_pose == "home"
        assert state.get_system_status()["active_sessions"] == 1
        state.params.declare("gui.rate", 30)
        assert state.params.set("gui.rate", 60)["value"] == 60

        subscription = state.subscribe_events("stroke:events:*")
        assert subscription.get(timeout=0.05) is None
        got = []
        listener = threading.Thread(target=lambda: got.extend(subscription))
        listener.start()
        assert wait_until(lambda: numpat(raw) == 1)
        state.end_stroke_session(session_id)
        assert wait_until(lambda: len(got) == 1)
        subscription.close()
        listener.join(10)
        assert not listener.is_alive()
        assert got[0]["data"]["type"] == "session_end"

        with state.follow() as follower:
            snapshot = follower.get(timeout=10)
            assert snapshot["type"] == "snapshot" and session_id in snapshot["snapshot"]["sessions"]
            assert follower.get(timeout=0.05) is None


def test_many_threads_share_one_facade(redis_server):
    """Threads share one blocking manager; each call releases the GIL while it waits."""
    with sync.StateManager(redis_host=redis_server.host, redis_port=redis_server.port, node_id="gui") as state:
        session_ids = []
        lock = threading.Lock()

        def work() -> None:
            for _ in range(5):
                session_id = state.start_stroke_session(2, 2, "t")
                with lock:
                    session_ids.append(session_id)

        threads = [threading.Thread(target=work) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert len(set(session_ids)) == 20


def test_first_blocking_call_after_an_outage_reconnects(redis_server):
    """Issue #15 (a) for the blocking facade: after Redis was down longer than the driver kept
    trying, the first call once it is back works; once a write, once a status (which never
    raises, and said "not connected" instead)."""

    def outage() -> None:
        redis_server.kill()
        with pytest.raises(ConnectionError, match="failed: .*; hint: check that redis-server is up"):
            state.get_robot_state()
        time.sleep(OUTAGE_S)
        redis_server.start()

    with sync.StateManager(redis_host=redis_server.host, redis_port=redis_server.port, node_id="gui") as state:
        assert state.get_system_status()["redis_connected"] is True
        outage()
        state.update_robot_state(RobotState(node_id="gui", is_connected_l=True))  # the first call after
        assert state.get_robot_state().is_connected_l is True
        outage()
        status = state.get_system_status()  # the first call after
        assert status["redis_connected"] is True and status.get("error") is None, status


def test_blocking_facade_one_instance_per_process(redis_server):
    """Issue #15 (b): the blocking facade follows the async manager's one-instance rule: the same
    configuration gives the same object, another one (for either kind) is a ValueError naming
    both, and ``reset_instance`` lets the process re-target."""

    def facade(node_id: str) -> sync.StateManager:
        return sync.StateManager(redis_host=redis_server.host, redis_port=redis_server.port, node_id=node_id)

    first = facade("gui")
    assert facade("gui") is first
    with pytest.raises(ValueError, match=r"a tatbot_state.sync.StateManager for .* already exists in this process, not .*hint"):
        facade("other")
    with pytest.raises(ValueError, match=r"tatbot_state.sync.StateManager for .*as node gui already exists"):
        StateManager(redis_host=redis_server.host, redis_port=redis_server.port, node_id="other")
    kept = StateManager(redis_host=redis_server.host, redis_port=redis_server.port, node_id="gui")  # the same config
    assert kept.node_id == "gui" and kept is not first
    with pytest.raises(ValueError, match=r"StateManager for .*:%d as node gui already exists in this process, not .*:%d" % (redis_server.port, redis_server.port + 1)):
        sync.StateManager(redis_host=redis_server.host, redis_port=redis_server.port + 1, node_id="gui")
    sync.StateManager.reset_instance()
    assert facade("other").node_id == "other"


def test_threads_constructing_the_facade_get_one_object(redis_server):
    """Threads that make the facade at the same moment all get the one instance."""
    barrier = threading.Barrier(8)
    made: "queue.Queue[sync.StateManager]" = queue.Queue()

    def make() -> None:
        barrier.wait()
        made.put(sync.StateManager(redis_host=redis_server.host, redis_port=redis_server.port, node_id="gui"))

    threads = [threading.Thread(target=make) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    instances = {id(made.get(timeout=1)) for _ in threads}
    assert len(instances) == 1
