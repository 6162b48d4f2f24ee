"""Bad arguments, hostile data and Rust panics: each is a Python exception with the Rust
error's one-line message, never a crash."""

from __future__ import annotations

import asyncio

import pytest

import tatbot_state
from tatbot_state import CorruptError, NotFoundError, StateManager, _native, sync


def facade(server, node_id: str = "hog") -> sync.StateManager:
    return sync.StateManager(redis_host=server.host, redis_port=server.port, node_id=node_id)


def test_bad_arguments_raise_type_and_value_errors(redis_server):
    """Wrong types raise TypeError, wrong values ValueError, each naming the argument."""
    with facade(redis_server) as state:
        session_id = state.start_stroke_session(3, 3)
        cases = [
            (TypeError, "total_strokes", lambda: state.start_stroke_session("3", 3)),
            (ValueError, "total_strokes must be from 0 to 4294967295, got -1", lambda: state.start_stroke_session(-1, 3)),
            (ValueError, "stroke_idx must be from 0", lambda: state.update_stroke_progress(2**40, 0)),
            (TypeError, "pose_idx", lambda: state.update_stroke_progress(0, None)),
            (ValueError, "invalid session id", lambda: state.update_stroke_progress(0, 0, session_id="bad id\n")),
            (ValueError, "invalid node id", lambda: state.get_robot_state("no spaces allowed")),
            (TypeError, "robot_state must be a RobotState", lambda: state.update_robot_state("ready")),
            (ValueError, "robot_state is not a valid RobotState: node_id", lambda: state.update_robot_state({})),
            (TypeError, "event_data must be a dict", lambda: state.publish_event("stroke:events:x", ["list"])),
            (ValueError, "invalid channel name", lambda: state.publish_event("has space", {"type": "x"})),
            (TypeError, "details must be a dict", lambda: state.report_error("arm", "m", details="text")),
            (ValueError, "invalid error category", lambda: state.report_error("bad category!", "m")),
            (ValueError, "error message is 5000 bytes; the limit is 4096", lambda: state.report_error("arm", "x" * 5000)),
            (ValueError, "scene name is", lambda: state.start_stroke_session(1, 1, "s" * 5000)),
            (ValueError, "at least one channel", lambda: state.subscribe_events()),
            (ValueError, "timeout must be a finite number", lambda: state.producer().flush(-1)),
            (ValueError, "poll_interval_us must be at least 10, got 1", lambda: state.producer(poll_interval_us=1)),
            (ValueError, "max_queued must be at least 1, got 0", lambda: state.producer(max_queued=0)),
            (ValueError, "arms.speed: value must be", lambda: state.params.set("arms.speed", {"a": 1})),
            (NotFoundError, "arms.speed: no such parameter", lambda: state.params.set("arms.speed", 1)),
            (NotFoundError, "arms.speed: no such parameter", lambda: state.params.value("arms.speed")),
            (ValueError, "follow cursor", lambda: state.follow(cursor="nonsense")),
        ]
        for kind, message, call in cases:
            with pytest.raises(kind, match=message.replace("(", r"\(")) as caught:
                call()
            assert "\n" not in str(caught.value), str(caught.value)
        assert state.get_stroke_progress(session_id) is not None  # nothing above broke the manager


def test_bad_configuration(redis_server):
    """Bad ports and node ids are ValueErrors at construction; a dead port a ConnectionError with a hint."""
    with pytest.raises(ValueError, match="redis_port must be from 1 to 65535, got 70000"):
        StateManager(redis_port=70000, node_id="hog")
    with pytest.raises(ValueError, match="invalid node id"):
        StateManager(redis_host="127.0.0.1", node_id="")
    with pytest.raises(TypeError):
        StateManager(redis_port="6379", node_id="hog")
    redis_server.kill()
    state = StateManager(redis_host=redis_server.host, redis_port=redis_server.port, node_id="hog")
    with pytest.raises(ConnectionError, match=rf"cannot reach Redis at 127.0.0.1:{redis_server.port}.*hint: start redis-server"):
        asyncio.run(state.connect())


def test_hostile_data_is_reported_not_fatal(redis_server, raw):
    """Any LAN member can write any key: wrong types, huge values and control characters are
    reported per entry (CorruptError for a direct read, skipped with a warning in listings)."""
    raw.set("robot:state:hog", "not a hash")
    raw.hset("stroke:progress:stroke_x_1", "progress", "\x00\x1b[31m{")
    raw.hset("node:health:evil", "health", "x" * 2_000_000)
    raw.hset("node:health:good", "health", '{"timestamp":"2026-11-25T17:15:37","node_id":"good","last_heartbeat":"2026-11-25T17:15:37"}')
    raw.expire("node:health:good", 60)
    with facade(redis_server) as state:
        with pytest.raises(CorruptError, match="robot:state:hog"):
            state.get_robot_state("hog")
        with pytest.raises(CorruptError, match="stroke:progress:stroke_x_1"):
            state.get_stroke_progress("stroke_x_1")
        assert list(state.get_all_nodes_health()) == ["good"]
        status = state.get_system_status()
    assert {entry["key"] for entry in status["corrupt"]} >= {"stroke:progress:stroke_x_1", "node:health:evil"}


def test_non_json_messages_are_delivered_raw(redis_server, raw):
    """A message that is not JSON is handed over as its text, not dropped and not fatal."""
    with facade(redis_server) as state:
        subscription = state.subscribe_events("stroke:events:*")
        from conftest import wait_until

        assert wait_until(lambda: int(raw.execute_command("PUBSUB", "NUMPAT")) == 1)
        raw.publish("stroke:events:x", "\x07not json")
        message = subscription.get(timeout=10)
        subscription.close()
    assert message == {"channel": "stroke:events:x", "data": "\x07not json", "pattern": "stroke:events:*"}


def test_rust_panics_become_python_exceptions():
    """A Rust panic, in a synchronous call or inside an awaited one, is a RuntimeError."""
    with pytest.raises(RuntimeError, match="internal error in tatbot-state.*boom now"):
        _native._panic_for_tests("boom now", False)

    async def awaited():
        await _native._panic_for_tests("boom later", True)

    with pytest.raises(RuntimeError, match="internal error in tatbot-state.*boom later"):
        asyncio.run(awaited())
    with pytest.raises(RuntimeError, match="boom waited"):
        _native._panic_for_tests("boom waited", True).wait()
    assert tatbot_state.__version__
