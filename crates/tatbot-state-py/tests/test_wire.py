"""Wire, both directions: what the Python package writes is byte-for-byte what the Python
reference stored (``shared/wire/reference-sample.json``) and the Rust CLI reads it; what the
CLI and the reference wrote, the Python package reads."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime

from conftest import ROOT
from tatbot_state import NodeHealth, RobotState, StrokeProgress, sync


def reference() -> dict:
    """The Python reference's stored values, the copy the Rust golden tests use too."""
    return json.loads((ROOT / "crates" / "tatbot-state" / "tests" / "data" / "reference-sample.json").read_text())


def stored(sample: dict, key: str, field: str) -> str:
    return sample["keys"][key]["fields"][field]


def facade(server, node_id: str = "hog") -> sync.StateManager:
    return sync.StateManager(redis_host=server.host, redis_port=server.port, node_id=node_id)


def test_python_writes_the_reference_bytes(redis_server, raw, cli):
    """RobotState and NodeHealth written from Python models are stored byte-for-byte as the
    Python reference stored them, and the Rust CLI reads them back."""
    sample = reference()
    robot = RobotState.model_validate_json(stored(sample, "robot:state:hog", "state"))
    health = NodeHealth.model_validate_json(stored(sample, "node:health:hog", "health"))
    assert robot.timestamp == datetime(2026, 11, 25, 17, 15, 37, 792418)
    with facade(redis_server) as state:
        state.update_robot_state(robot)
        state.update_node_health(health)
    assert raw.hget("robot:state:hog", "state") == stored(sample, "robot:state:hog", "state")
    assert raw.hget("node:health:hog", "health") == stored(sample, "node:health:hog", "health")

    shown = json.loads(cli("robot", "hog", "--json").stdout)
    assert shown == json.loads(stored(sample, "robot:state:hog", "state"))
    shown = json.loads(cli("health", "hog", "--json").stdout)
    assert shown["cpu_percent"] == 12.5 and shown["mcp_port"] == 8000


def test_python_session_read_by_the_cli(redis_server, raw, cli):
    """A session driven from Python is what the CLI shows: progress, history and descriptions."""
    with facade(redis_server) as state:
        session_id = state.start_stroke_session(12, 8, "interop_scene")
        state.update_stroke_progress(10, 7, 'left stroke 5, "quoted"', "ünïcödé ✓ right", 2, 2)
    document = json.loads(raw.hget(f"stroke:progress:{session_id}", "progress"))
    sample = json.loads(stored(reference(), "stroke:progress:stroke_hog_1795626937", "progress"))
    assert list(document)[: len(sample)] == list(sample)  # the reference's fields, in its order
    shown = json.loads(cli("progress", session_id, "--json").stdout)
    text = json.dumps(shown, ensure_ascii=False)
    assert "ünïcödé ✓ right" in text and 'left stroke 5, \\"quoted\\"' in text
    entries = raw.xrange(f"stream:stroke_history:{session_id}")
    assert list(entries[-1][1].items()) == [
        ("stroke_idx", "10"),
        ("pose_idx", "7"),
        ("description_l", 'left stroke 5, "quoted"'),
        ("description_r", "ünïcödé ✓ right"),
        ("node_id", "hog"),
    ]


def test_python_reads_the_reference(redis_server, raw):
    """What the Python reference stored, the package reads with every value intact."""
    sample = reference()
    for key, spec in sample["keys"].items():
        if spec["type"] == "hash":
            raw.hset(key, mapping=spec["fields"])
        else:
            for entry_id, fields in spec["entries"]:
                raw.xadd(key, dict(zip(fields[::2], fields[1::2])), id=entry_id)
    with facade(redis_server, node_id="viewer") as state:
        progress = state.get_stroke_progress("stroke_hog_1795626937")
        robot = state.get_robot_state("hog")
        health = state.get_node_health("hog")
    assert isinstance(progress, StrokeProgress)
    assert progress.model_dump() == StrokeProgress.model_validate_json(stored(sample, "stroke:progress:stroke_hog_1795626937", "progress")).model_dump()
    assert progress.stroke_description_r == "ünïcödé ✓ right"
    assert robot.joints_r[3] == 0.00001 and robot.velocities_l is None and robot.goal_time_fast == 0.25
    assert health.mcp_port == 8000 and health.last_heartbeat == datetime(2026, 11, 25, 17, 15, 37, 792136)


def test_cli_writes_python_reads(redis_server, cli):
    """A session the Rust CLI simulates and a parameter it sets are read by the Python package."""
    cli("--node-id", "rustbot", "simulate", "--strokes", "2", "--stroke-length", "3", "--hz", "0", "--scene", "from-rust")
    cli("param", "set", "arms.speed", "1.5", check=False)  # undeclared: refused, as the CLI says
    with facade(redis_server, node_id="pyreader") as state:
        state.params.declare("arms.speed", 1.0)
        cli("param", "set", "arms.speed", "1.5")
        assert state.params.value("arms.speed") == 1.5
        status = state.get_system_status()
        assert status["total_sessions"] == 1
    sessions = json.loads(cli("sessions", "--json").stdout)
    text = json.dumps(sessions)
    assert "from-rust" in text
    with facade(redis_server, node_id="pyreader") as state:
        session_id = next(word for word in text.replace('"', " ").split() if word.startswith("stroke_rustbot_"))
        progress = state.get_stroke_progress(session_id)
    assert (progress.node_id, progress.stroke_idx, progress.pose_idx, progress.scene_name) == ("rustbot", 1, 2, "from-rust")
    assert not progress.is_executing


def test_events_on_the_wire(redis_server, raw):
    """An event published from Python reaches a plain redis-py subscriber as ``json.dumps``
    wrote it in the old manager, on the channel given."""
    pubsub = raw.pubsub()
    pubsub.psubscribe("stroke:events:*")
    assert pubsub.get_message(timeout=5)["type"] == "psubscribe"
    event = {"type": "session_end", "session_id": "stroke_hog_1", "node_id": "hog", "timestamp": "2026-11-25T17:15:37.795531"}
    with facade(redis_server) as state:
        state.publish_event("stroke:events:session", event)
    got = pubsub.get_message(timeout=5)
    assert got is not None and got["type"] == "pmessage"
    assert got["channel"] == "stroke:events:session"
    assert got["data"] == json.dumps(event)
    pubsub.close()

