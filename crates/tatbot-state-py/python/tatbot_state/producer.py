"""The robot's fast path: :class:`Producer`, a writer whose calls never wait on Redis.

Each queuing call validates its arguments, hands the write to the Rust writer's queue and
returns its sequence number, keeping the GIL for that sub-microsecond push (released, another
Python thread could take it and the call would wait for it back); a background task on the
shared tokio runtime, which never takes the GIL, pipelines, coalesces and replays the writes
after a Redis restart. ``flush(timeout)`` blocks until what was queued is stored. Usable from a plain
synchronous control loop; see docs/PYTHON.md.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Optional

from tatbot_state import _common
from tatbot_state.models import NodeHealth, RobotState


class Producer:
    """A non-blocking writer; make one with ``state.producer()``.

    ``update_stroke_progress``, ``end_stroke_session``, ``start_stroke_session``, ``flush`` and
    ``close`` are the Rust methods themselves (no Python frame on the hot path); the calls that
    take models convert them to JSON first. Use it as a context manager to ``close`` it at the
    end, which flushes and stops the writer.
    """

    __slots__ = ("_native", "update_stroke_progress", "end_stroke_session", "start_stroke_session", "flush", "close")

    def __init__(self, native: Any) -> None:
        self._native = native
        # Bound Rust methods: a call costs what the Rust call costs.
        self.update_stroke_progress = native.update_stroke_progress
        self.end_stroke_session = native.end_stroke_session
        self.start_stroke_session = native.start_stroke_session
        self.flush = native.flush
        self.close = native.close

    @property
    def session_id(self) -> Optional[str]:
        """The session the last ``start_stroke_session`` started, until it is ended."""
        return self._native.session_id

    def update_robot_state(self, robot_state: RobotState) -> int:
        """Queues a robot state; a newer one for the same node replaces it while queued."""
        return self._native._update_robot_state_json(_common.model_json(RobotState, robot_state, "robot_state"))

    def update_node_health(self, health: NodeHealth) -> int:
        """Queues a heartbeat; a newer one for the same node replaces it while queued."""
        return self._native._update_node_health_json(_common.model_json(NodeHealth, health, "health"))

    def report_error(self, error_category: str, error_message: str, details: Optional[Dict[str, Any]] = None) -> int:
        """Queues an error report (stored in the error log and published)."""
        return self._native._report_error_json(
            _common.text(error_category, "error_category"),
            _common.text(error_message, "error_message"),
            _common.details_json(details),
        )

    def stats(self) -> Dict[str, Any]:
        """The writer's counters: ``enqueued``, ``acknowledged``, ``queued``, ``dropped``, ..."""
        return json.loads(self._native._stats_json())

    def wake_stats(self) -> Dict[str, int]:
        """How the writer was woken for the calls: ``call_wakes`` (calls that found it parked
        and woke it, a system call on the caller's thread), ``anticipated`` and ``missed``
        (bursts of a steady loop it was woken for ahead of time, and those that came while it
        was parked anyway), ``late`` (ahead-of-time wake-ups that came after the burst was due),
        all counted since the producer started, and ``lead_us``, how long before a due burst the
        writer is woken now; all zero with ``poll_interval_us``."""
        return json.loads(self._native._wake_stats_json())

    def __enter__(self) -> "Producer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
