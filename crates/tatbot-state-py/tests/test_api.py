"""The old async API, method by method, against a real redis-server; and call pattern (c): an
MCP-style ``async with StateManager(...)`` per read."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import pytest

from tatbot_state import NodeHealth, RobotState, StateManager, StrokeProgress


def manager(server, node_id: str = "hog") -> StateManager:
    return StateManager(redis_host=server.host, redis_port=server.port, node_id=node_id)


def test_every_method_of_the_old_api(redis_server, raw):
    """Each method of the old manager works with its old arguments, defaults and return types."""

    async def scenario():
        async with manager(redis_server) as state:
            session_id = await state.start_stroke_session(total_strokes=12, stroke_length=8)
            assert isinstance(session_id, str) and session_id.startswith("stroke_hog_")
            assert await state.update_stroke_progress(stroke_idx=5, pose_idx=3, session_id=session_id) is None
            await state.update_stroke_progress(6, 2, "left", "right", 1, 2)  # the current session
            progress = await state.get_stroke_progress()
            assert isinstance(progress, StrokeProgress)
            assert (progress.stroke_idx, progress.pose_idx, progress.stroke_description_l) == (6, 2, "left")
            assert (progress.offset_idx_l, progress.offset_idx_r, progress.scene_name) == (1, 2, "default")
            assert progress.is_executing
            assert await state.end_stroke_session() is None
            ended = await state.get_stroke_progress(session_id)
            assert ended is not None and not ended.is_executing

            assert await state.update_robot_state(RobotState(node_id="hog", is_connected_l=True, current_pose="ready")) is None
            robot = await state.get_robot_state()
            assert isinstance(robot, RobotState) and robot.current_pose == "ready" and robot.is_connected_l
            assert await state.get_robot_state("nobody") is None

            await state.update_node_health(NodeHealth(node_id="hog", cpu_percent=12.5))
            health = await state.get_node_health()
            assert isinstance(health, NodeHealth) and health.cpu_percent == 12.5
            await state.update_node_health()  # sampled from this machine
            sampled = await state.get_node_health("hog")
            assert sampled is not None and sampled.ping_latency_ms is not None
            everyone = await state.get_all_nodes_health()
            assert list(everyone) == ["hog"] and isinstance(everyone["hog"], NodeHealth)

            assert await state.publish_event("stroke:events:custom", {"type": "note", "text": "hi"}) is None
            assert await state.report_error("arm", "joint 3 over temperature", {"joint": 3}) is None
            assert await state.report_error("arm", "no details") is None

            status = await state.get_system_status()
            assert status["redis_connected"] is True and status["nodes_online"] == 1
            assert status["total_sessions"] == 1 and status["corrupt"] == []

            assert await state.clear_session_data(session_id) is True
            assert await state.get_stroke_progress(session_id) is None

    asyncio.run(scenario())
    assert raw.exists("error:events:arm") == 0  # errors go to pub/sub and the error log only
    assert raw.xlen("tatbot:errors") == 2


def test_subscribe_events_with_patterns(redis_server):
    """``subscribe_events`` yields ``{"channel", "data", "pattern"}`` for patterns and plain channels."""

    async def scenario():
        async with manager(redis_server) as state:
            received = []

            async def listen(*channels):
                async for message in state.subscribe_events(*channels):
                    received.append(message)
                    if len(received) == 3:
                        return

            listener = asyncio.ensure_future(listen("stroke:events:*", "robot:events"))
            # Subscribed once the server counts the pattern; nothing is lost before.
            for _ in range(1000):
                if await _patterns(redis_server) >= 1:
                    break
                await asyncio.sleep(0.01)
            session_id = await state.start_stroke_session(2, 2, "scene")
            await state.update_stroke_progress(0, 1, session_id=session_id)
            await state.update_robot_state(RobotState(node_id="hog"))
            await asyncio.wait_for(listener, 10)
            return session_id, received

    session_id, received = asyncio.run(scenario())
    by_type = {message["data"]["type"]: message for message in received}
    assert by_type["session_start"]["channel"] == "stroke:events:session"
    assert by_type["session_start"]["pattern"] == "stroke:events:*"
    assert by_type["session_start"]["data"]["session_id"] == session_id
    assert by_type["progress_update"]["data"]["pose_idx"] == 1
    assert by_type["state_update"] == {
        "channel": "robot:events",
        "data": by_type["state_update"]["data"],
        "pattern": None,
    }


async def _patterns(server) -> int:
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(b"PUBSUB NUMPAT\r\n")
    line = await reader.readline()
    writer.close()
    return int(line[1:])


def test_pattern_c_async_with_per_read(redis_server):
    """Pattern (c): an MCP-style handler opens ``async with StateManager(...)`` for every read;
    it sees the robot's live session (the old one never found it) and the same instance each time."""
    writer = manager(redis_server)

    async def robot():
        async with writer as state:
            session_id = await state.start_stroke_session(5, 5, "mcp")
            await state.update_stroke_progress(2, 4, session_id=session_id)
            return session_id

    session_id = asyncio.run(robot())
    StateManager.reset_instance()  # another process, as the MCP server is

    async def read_once():
        async with StateManager(redis_host=redis_server.host, redis_port=redis_server.port, node_id="mcp") as state:
            return state, await state.get_stroke_progress(), await state.get_system_status()

    seen = [asyncio.run(read_once()) for _ in range(3)]
    assert seen[0][0] is seen[1][0] is seen[2][0]
    for _, progress, status in seen:
        assert progress is not None and (progress.stroke_idx, progress.pose_idx) == (2, 4)
        assert status["active_sessions"] == 1
    assert not seen[0][0].is_connected  # every async with closed its connection


def test_one_instance_per_process(redis_server):
    """The same configuration gives the same instance; another one is a ValueError naming both."""
    first = manager(redis_server)
    assert manager(redis_server) is first
    with pytest.raises(ValueError, match=r"already exists in this process.*hint"):
        manager(redis_server, node_id="other")
    with pytest.raises(ValueError, match="already exists"):
        StateManager(redis_host=redis_server.host, redis_port=redis_server.port + 1, node_id="hog")


def test_defaults_resolve_like_the_cli(redis_server, monkeypatch):
    """Without arguments, host and port come from REDIS_* (as the CLI), node id from the host name."""
    monkeypatch.setenv("REDIS_HOST", redis_server.host)
    monkeypatch.setenv("REDIS_PORT", str(redis_server.port))
    state = StateManager()
    assert (state.redis_host, state.redis_port) == (redis_server.host, redis_server.port)
    expected = "".join(c if (c.isascii() and c.isalnum()) or c in "_.-" else "-" for c in socket.gethostname())
    assert state.node_id == (expected[:64] or "node")

    async def ping():
        async with state:
            return await state.get_system_status()

    assert asyncio.run(ping())["redis_connected"] is True


def test_follow_and_params(redis_server):
    """Point 4: parameters and a follow iterator that resumes from its cursor."""

    async def scenario():
        async with manager(redis_server) as state:
            declared = await state.params.declare("arms.goal_time_slow", 2.0, description="s", min=0.1, max=5.0)
            assert declared["value"] == 2.0 and declared["version"] == 1
            assert (await state.params.set("arms.goal_time_slow", 3))["value"] == 3.0
            assert await state.params.value("arms.goal_time_slow") == 3.0
            assert [param["name"] for param in await state.params.list("arms")] == ["arms.goal_time_slow"]
            assert "goal_time_slow: 3.0" in await state.params.dump()
            assert await state.params.get("arms.nothing") is None

            session_id = await state.start_stroke_session(3, 3, "follow")
            follow = state.follow()
            first = await follow.__anext__()
            assert first["type"] == "snapshot" and session_id in first["snapshot"]["sessions"]
            cursor = first["cursor"]
            await follow.aclose()
            await state.update_stroke_progress(1, 2, session_id=session_id)
            resumed = state.follow(cursor=cursor)
            change = await asyncio.wait_for(resumed.__anext__(), 10)
            while not (change["type"] == "change" and change["change"]["kind"] == "progress"):
                change = await asyncio.wait_for(resumed.__anext__(), 10)
            await resumed.aclose()
            return change

    change = asyncio.run(scenario())
    assert (change["change"]["entry"]["stroke_idx"], change["change"]["entry"]["pose_idx"]) == (1, 2)
    assert change["cursor"]


def test_cancelled_awaits_leave_the_manager_working(redis_server):
    """A task cancelled while its call is in flight does not break the loop's bridge: the late
    result is dropped and the next calls answer."""

    async def scenario():
        async with manager(redis_server) as state:
            for _ in range(5):
                task = asyncio.ensure_future(state.get_system_status())
                await asyncio.sleep(0)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            statuses = await asyncio.gather(*(state.get_system_status() for _ in range(20)))
            return statuses

    assert all(status["redis_connected"] for status in asyncio.run(scenario()))


def test_every_result_wakes_its_loop(redis_server):
    """Results that finish while the loop is taking earlier ones still wake it: the bridge's
    drain used to clear its "told" flag before reading the wake bytes, so a result that came in
    between had its byte swallowed, the flag stayed set, and every later ``await`` on that loop
    hung for good (CI hung in ``test_subscribe_events_with_patterns``). Many rounds of concurrent
    calls make that window likely; each round is bounded so a lost wake fails here, not hangs."""

    async def rounds(state, count):
        for _ in range(count):
            await asyncio.wait_for(asyncio.gather(*(state.get_robot_state() for _ in range(20))), 10)

    async def scenario():
        async with manager(redis_server) as state:
            await rounds(state, 50)

    for _ in range(20):  # a loop of its own each time, as asyncio.run in a GUI thread makes
        asyncio.run(scenario())


#: How long the outage tests keep Redis down: longer than the shared connection's driver keeps
#: trying to reconnect (two attempts 50 ms apart), so that its failure is what the next call
#: meets. The driver says nothing when it gives up, so there is no event to wait for; the
#: outage's length is the scenario itself.
OUTAGE_S = 1.0


def test_first_call_after_an_outage_reconnects(redis_server, raw):
    """Issue #15 (a): the first awaited call after Redis came back works, as it did with the old
    manager (redis-py's pool reconnected on use), and is applied once: while Redis was down the
    driver's reconnect failed and kept that failure for the next caller, which raised
    ``ConnectionError`` though Redis was up again."""

    async def scenario():
        async with manager(redis_server) as state:
            await state.report_error("hardware", "before the outage")
            redis_server.kill()
            with pytest.raises(ConnectionError, match="failed: .*; hint: check that redis-server is up"):
                await state.get_robot_state()  # while down: a clear error, not a hang
            time.sleep(OUTAGE_S)
            redis_server.start()  # empty: persistence is off
            await state.report_error("hardware", "after the outage")  # the first call after
            return await state.get_system_status()

    status = asyncio.run(scenario())
    assert status["redis_connected"] is True
    messages = [json.loads(fields["payload"])["message"] for _, fields in raw.xrange("tatbot:errors")]
    assert messages == ["after the outage"]  # stored once
