"""The wire's documents as pydantic v2 models, with exactly the fields of the wire contract.

Readers ignore unknown fields and fill missing ones with the contract's defaults, as the fleet's
Python nodes always did. Timestamps are naive UTC ``datetime`` objects; the Rust core writes
them as naive ISO-8601 with six fraction digits and reads any ISO-8601 form.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import List, Optional

from pydantic import BaseModel, Field


def utcnow() -> datetime:
    """Now, as the naive UTC datetime the wire uses."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


class RobotState(BaseModel):
    """Both arms' connection and joint state (``robot:state:{node_id}``)."""

    timestamp: datetime = Field(default_factory=utcnow)
    node_id: str
    is_connected_l: bool = False
    is_connected_r: bool = False
    joints_l: Optional[List[float]] = None
    joints_r: Optional[List[float]] = None
    velocities_l: Optional[List[float]] = None
    velocities_r: Optional[List[float]] = None
    current_pose: str = "unknown"
    goal_time_slow: float = 2.0
    goal_time_fast: float = 0.5


class StrokeProgress(BaseModel):
    """Where a stroke session is (``stroke:progress:{session_id}``)."""

    timestamp: datetime = Field(default_factory=utcnow)
    node_id: str
    stroke_idx: int = 0
    pose_idx: int = 0
    total_strokes: int = 0
    stroke_length: int = 0
    stroke_description_l: str = ""
    stroke_description_r: str = ""
    offset_idx_l: int = 0
    offset_idx_r: int = 0
    is_executing: bool = False
    is_paused: bool = False
    scene_name: str = "default"
    dataset_name: Optional[str] = None


class NodeHealth(BaseModel):
    """One node's heartbeat (``node:health:{node_id}``, 60 s TTL)."""

    timestamp: datetime = Field(default_factory=utcnow)
    node_id: str
    cpu_percent: float = 0.0
    memory_percent: float = 0.0
    disk_percent: float = 0.0
    gpu_available: bool = False
    gpu_percent: Optional[float] = None
    gpu_memory_percent: Optional[float] = None
    is_reachable: bool = True
    ping_latency_ms: Optional[float] = None
    mcp_server_running: bool = False
    mcp_port: Optional[int] = None
    last_heartbeat: datetime = Field(default_factory=utcnow)
