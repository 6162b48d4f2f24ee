"""Every call of the old API once: each function checks its arguments, starts the core's call
and says how to turn the answer into the old API's return value.

The async :class:`tatbot_state.StateManager` awaits the call and the blocking
:class:`tatbot_state.sync.StateManager` waits for it (``Call.wait`` releases the GIL); both are
made from these functions by :func:`awaited` and :func:`blocking`, so the two never drift
apart.
"""

from __future__ import annotations

import functools
import json
from typing import Any, Callable, Dict, Optional, Tuple

from tatbot_state import _common, _native
from tatbot_state.models import NodeHealth, RobotState, StrokeProgress

#: What an operation returns: the core's pending call and what makes the answer.
Op = Tuple[Any, Callable[[Any], Any]]


def _none(_: Any) -> None:
    return None


def start_stroke_session(self, total_strokes: int, stroke_length: int, scene_name: str = "default") -> Op:
    call = self._native.start_stroke_session(total_strokes, stroke_length, _common.text(scene_name, "scene_name"))

    def started(session_id: str) -> str:
        self.current_session_id = session_id
        return session_id

    return call, started


def update_stroke_progress(
    self,
    stroke_idx: int,
    pose_idx: int = 0,
    stroke_description_l: str = "",
    stroke_description_r: str = "",
    offset_idx_l: int = 0,
    offset_idx_r: int = 0,
    session_id: Optional[str] = None,
) -> Op:
    session_id = session_id if session_id is not None else self.current_session_id
    if session_id is None:
        raise _common.no_session()
    call = self._native.update_stroke_progress(
        session_id, stroke_idx, pose_idx, stroke_description_l, stroke_description_r, offset_idx_l, offset_idx_r
    )
    return call, _none


def get_stroke_progress(self, session_id: Optional[str] = None) -> Op:
    session_id = session_id if session_id is not None else self.current_session_id
    call = self._native.get_stroke_progress(session_id)
    return call, functools.partial(_common.maybe, StrokeProgress)


def end_stroke_session(self, session_id: Optional[str] = None) -> Op:
    session_id = session_id if session_id is not None else self.current_session_id
    if session_id is None:
        raise _common.no_session()
    call = self._native.end_stroke_session(session_id)

    def ended(_: Any) -> None:
        if self.current_session_id == session_id:
            self.current_session_id = None

    return call, ended


def update_robot_state(self, robot_state: RobotState) -> Op:
    return self._native.update_robot_state(_common.model_json(RobotState, robot_state, "robot_state")), _none


def get_robot_state(self, node_id: Optional[str] = None) -> Op:
    return self._native.get_robot_state(node_id), functools.partial(_common.maybe, RobotState)


def update_node_health(self, health: Optional[NodeHealth] = None) -> Op:
    document = None if health is None else _common.model_json(NodeHealth, health, "health")
    return self._native.update_node_health(document), _none


def get_node_health(self, node_id: Optional[str] = None) -> Op:
    return self._native.get_node_health(node_id), functools.partial(_common.maybe, NodeHealth)


def get_all_nodes_health(self) -> Op:
    return self._native.get_all_nodes_health(), _common.nodes_health


def publish_event(self, channel: str, event_data: Dict[str, Any]) -> Op:
    return self._native.publish_event(_common.text(channel, "channel"), _common.event_json(event_data)), _none


def report_error(self, error_category: str, error_message: str, details: Optional[Dict[str, Any]] = None) -> Op:
    call = self._native.report_error(
        _common.text(error_category, "error_category"),
        _common.text(error_message, "error_message"),
        _common.details_json(details),
    )
    return call, _none


def clear_session_data(self, session_id: str) -> Op:
    call = self._native.clear_session_data(_common.text(session_id, "session_id"))

    def cleared(deleted: bool) -> bool:
        if self.current_session_id == session_id:
            self.current_session_id = None
        return deleted

    return call, cleared


def get_system_status(self) -> Op:
    return self._native.system_status(), json.loads


# Parameters (``state.params``): the owner is the Params object, whose ``_native`` is its
# manager's.


def param_declare(
    self,
    name: str,
    default: Any,
    description: str = "",
    min: Optional[float] = None,
    max: Optional[float] = None,
    step: Optional[float] = None,
    read_only: bool = False,
) -> Op:
    descriptor = {
        "default": default,
        "description": _common.text(description, "description"),
        "min": min,
        "max": max,
        "step": step,
        "read_only": bool(read_only),
    }
    return self._native.param_declare(_common.text(name, "name"), json.dumps(descriptor)), json.loads


def param_get(self, name: str) -> Op:
    return self._native.param_get(_common.text(name, "name")), lambda raw: None if raw is None else json.loads(raw)


def param_value(self, name: str) -> Op:
    def value(raw: Optional[str]) -> Any:
        if raw is None:
            raise _native.NotFoundError(f"{name}: no such parameter; hint: declare it first")
        return json.loads(raw)["value"]

    return self._native.param_get(_common.text(name, "name")), value


def param_set(self, name: str, value: Any, if_version: Optional[int] = None) -> Op:
    return self._native.param_set(_common.text(name, "name"), json.dumps(value), if_version), json.loads


def param_list(self, prefix: str = "") -> Op:
    def listed(raw: str) -> list:
        answer = json.loads(raw)
        for entry in answer["corrupt"]:
            _common.log.warning("skipping corrupt parameter %s: %s", entry["key"], entry["error"])
        return answer["params"]

    return self._native.param_list(_common.text(prefix, "prefix")), listed


def param_dump(self, prefix: str = "") -> Op:
    return self._native.param_dump(_common.text(prefix, "prefix")), lambda raw: raw


def param_load(self, text: str, prefix: str = "") -> Op:
    return self._native.param_load(_common.text(text, "text"), _common.text(prefix, "prefix")), json.loads


def _named(op: Callable, name: Optional[str], method: Callable) -> Callable:
    functools.update_wrapper(method, op)
    if name is not None:
        method.__name__ = method.__qualname__ = name
    return method


def awaited(op: Callable, name: Optional[str] = None) -> Callable:
    """``op`` as a coroutine method: connects when needed, then awaits the core's call."""

    async def method(self, *args: Any, **kwargs: Any) -> Any:
        if self._native is None:  # tested here, not in a coroutine: one fewer per call
            await self._ensure_connected()
        call, finish = op(self, *args, **kwargs)
        return finish(await call)

    return _named(op, name, method)


def blocking(op: Callable, name: Optional[str] = None) -> Callable:
    """``op`` as a blocking method: connects when needed, then waits for the core's call with
    the GIL released."""

    def method(self, *args: Any, **kwargs: Any) -> Any:
        self._ensure_connected()
        call, finish = op(self, *args, **kwargs)
        return finish(call.wait())

    return _named(op, name, method)
