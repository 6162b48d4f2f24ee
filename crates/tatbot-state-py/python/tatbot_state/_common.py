"""What the async manager, the blocking facade and the producer share: argument checks that
raise ``TypeError``/``ValueError`` before anything reaches Redis, the node id default, and the
decoding of the core's JSON answers into models and dicts.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import weakref
from typing import Any, Callable, Dict, List, Optional, Type, TypeVar

from pydantic import BaseModel, ValidationError

from tatbot_state.models import NodeHealth, RobotState, StrokeProgress

log = logging.getLogger("tatbot_state")

M = TypeVar("M", bound=BaseModel)

#: The longest node id the core accepts.
MAX_ID_LEN = 64


def default_node_id() -> str:
    """The host name with characters a node id may not hold replaced by ``-`` (as the CLI does)."""
    raw = socket.gethostname()
    cleaned = "".join(c if (c.isascii() and c.isalnum()) or c in "_.-" else "-" for c in raw)
    return cleaned[:MAX_ID_LEN] or "node"


#: The process's managers by kind (the async manager's and the blocking facade's class names),
#: held weakly: a manager nobody holds any more no longer pins the configuration.
_instances: Dict[str, "weakref.ReferenceType[Any]"] = {}
_instances_lock = threading.Lock()


def one_instance(cls: type, kind: str, target: Any, setup: Callable[[Any], None]) -> Any:
    """The process's manager of class ``cls`` (named ``kind`` in errors) for ``target``: the existing one when it names the
    same configuration, else a new one made with ``setup`` (under the lock, so no other thread
    sees it half made).

    One instance per process, as the old manager had: every manager of the process, async or
    blocking, must name the same server, credentials and node; another one raises
    ``ValueError`` naming both, with the way out.
    """
    with _instances_lock:
        for other_kind, ref in list(_instances.items()):
            existing = ref()
            if existing is None:
                del _instances[other_kind]
            elif not existing._target.same_as(target):
                raise ValueError(
                    f"a {other_kind} for {existing._target.describe()} already exists in this process, "
                    f"not {target.describe()}; hint: reuse it, or disconnect() it and call StateManager.reset_instance()"
                )
        ref = _instances.get(kind)
        existing = ref() if ref is not None else None
        if existing is not None:
            return existing
        made = object.__new__(cls)
        made._target = target
        setup(made)
        _instances[kind] = weakref.ref(made)
        return made


def forget_instances() -> None:
    """Forgets the process's managers (both kinds), so the next one may name another configuration."""
    with _instances_lock:
        _instances.clear()


def model_json(model: Type[M], value: Any, what: str) -> str:
    """``value`` (a ``model`` or a dict of its fields) as the JSON the core reads."""
    if isinstance(value, model):
        return value.model_dump_json()
    if isinstance(value, dict):
        try:
            return model.model_validate(value).model_dump_json()
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise ValueError(f"{what} is not a valid {model.__name__}: {where}: {first['msg']}") from None
    raise TypeError(f"{what} must be a {model.__name__} (or a dict of its fields), got {type(value).__name__}")


def details_json(details: Optional[Dict[str, Any]]) -> str:
    """An error report's details as a JSON object."""
    if details is None:
        return "{}"
    if not isinstance(details, dict):
        raise TypeError(f"details must be a dict or None, got {type(details).__name__}")
    return json.dumps(details)


def event_json(event_data: Dict[str, Any]) -> str:
    """An event body as JSON, written as the old manager wrote it (``json.dumps`` defaults)."""
    if not isinstance(event_data, dict):
        raise TypeError(f"event_data must be a dict, got {type(event_data).__name__}")
    return json.dumps(event_data)


def text(value: Any, what: str) -> str:
    """``value`` if it is a ``str``, else ``TypeError``."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {type(value).__name__}")
    return value


def maybe(model: Type[M], raw: Optional[str]) -> Optional[M]:
    """The model of a document the core read, or ``None``."""
    return None if raw is None else model.model_validate_json(raw)


def nodes_health(raw: str) -> Dict[str, NodeHealth]:
    """Every live heartbeat by node id; each one that did not decode is logged, naming its key."""
    answer = json.loads(raw)
    for entry in answer["corrupt"]:
        log.warning("skipping corrupt heartbeat %s: %s", entry["key"], entry["error"])
    return {node_id: NodeHealth.model_validate(doc) for node_id, doc in answer["nodes"].items()}


_GLOB = frozenset("*?[")


def message(raw: List[Optional[str]]) -> Dict[str, Any]:
    """A received message as the old manager gave it: ``{"channel", "data", "pattern"}``.

    ``data`` is the decoded JSON body, or the body as a string when it is not JSON (any LAN
    member can publish anything). ``pattern`` is the glob pattern that matched, or ``None`` for
    a plain channel name.
    """
    channel, pattern, payload = raw
    try:
        data: Any = json.loads(payload) if payload is not None else None
    except ValueError:
        data = payload
    if pattern is not None and not (_GLOB & set(pattern)):
        pattern = None
    return {"channel": channel, "data": data, "pattern": pattern}


def channels(values: tuple) -> List[str]:
    """``subscribe_events``' arguments as a list of patterns."""
    if not values:
        raise ValueError('subscribe_events needs at least one channel or pattern, such as "stroke:events:*"')
    return [text(value, "each channel") for value in values]


def no_session() -> ValueError:
    """The error for a call that needs a session when none was started here."""
    return ValueError("no current stroke session; hint: call start_stroke_session() first or pass session_id=")


__all__ = ["RobotState", "StrokeProgress", "NodeHealth"]
