"""The blocking facade, for code that runs Redis work in a thread (GUIs) or has no event loop.

:class:`StateManager` has the async manager's methods as plain blocking calls: each waits for
the Rust core with the GIL released, so other Python threads run meanwhile, and no asyncio loop
is made (no more ``asyncio.run`` in a thread). :meth:`StateManager.subscribe_events` returns a
:class:`Subscription` to iterate over, or to poll with a timeout, and to ``close`` from any
thread. One instance per process, as for the async manager: constructing it again with the
same configuration returns the same object, and any manager of the process (async or blocking)
naming another configuration raises ``ValueError``.
"""

from __future__ import annotations

import json
import threading
from typing import Any, Dict, Iterator, Optional

from tatbot_state import _common, _native, _ops
from tatbot_state.producer import Producer


class Subscription:
    """A blocking pub/sub subscription: ``for message in subscription: ...``.

    Each message is ``{"channel", "data", "pattern"}``. It reconnects by itself and fills gaps
    from the event log. ``close()`` (from any thread) ends the iteration.
    """

    def __init__(self, native: Any) -> None:
        self._native = native

    def get(self, timeout: Optional[float] = None) -> Optional[Dict[str, Any]]:
        """The next message, or ``None`` after ``timeout`` seconds (or once closed)."""
        raw = self._native.next(timeout).wait()
        return None if raw is None else _common.message(raw)

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        while True:
            raw = self._native.next(None).wait()
            if raw is None:
                return
            yield _common.message(raw)

    def close(self) -> None:
        """Ends the subscription; a ``get`` or iteration waiting in another thread returns."""
        self._native.close()

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Follower:
    """A blocking follow: a snapshot, then every change, each with the ``cursor`` after it."""

    def __init__(self, native: Any) -> None:
        self._native = native

    def get(self, timeout: Optional[float] = None) -> Optional[Dict[str, Any]]:
        """The next item, or ``None`` after ``timeout`` seconds (or once closed)."""
        raw = self._native.next(timeout).wait()
        return None if raw is None else json.loads(raw)

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        while True:
            raw = self._native.next(None).wait()
            if raw is None:
                return
            yield json.loads(raw)

    def close(self) -> None:
        """Ends the follow; a ``get`` or iteration waiting in another thread returns."""
        self._native.close()

    def __enter__(self) -> "Follower":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Params:
    """Parameters, blocking (``state.params``)."""

    def __init__(self, owner: Any) -> None:
        self._owner = owner

    @property
    def _native(self) -> Any:
        return self._owner._native

    def _ensure_connected(self) -> None:
        self._owner._ensure_connected()

    declare = _ops.blocking(_ops.param_declare, "declare")
    get = _ops.blocking(_ops.param_get, "get")
    value = _ops.blocking(_ops.param_value, "value")
    set = _ops.blocking(_ops.param_set, "set")
    list = _ops.blocking(_ops.param_list, "list")
    dump = _ops.blocking(_ops.param_dump, "dump")
    load = _ops.blocking(_ops.param_load, "load")


class StateManager:
    """The old API as blocking calls: ``with StateManager(node_id="gui") as state: ...``.

    Arguments and defaults as :class:`tatbot_state.StateManager`, and the same one-instance rule
    (the same configuration gives the same object; another one raises ``ValueError``). Safe to
    share between threads; each call releases the GIL while it waits.
    """

    def __new__(
        cls,
        redis_host: Optional[str] = None,
        redis_port: Optional[int] = None,
        redis_password: Optional[str] = None,
        node_id: Optional[str] = None,
    ) -> "StateManager":
        target = _native.Target(node_id if node_id is not None else _common.default_node_id(), redis_host, redis_port, redis_password)
        return _common.one_instance(cls, "tatbot_state.sync.StateManager", target, cls._setup)

    def _setup(self) -> None:
        self._native: Any = None
        self._lock = threading.Lock()
        self.current_session_id: Optional[str] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Everything is set up in __new__, which may return the existing instance.
        pass

    @classmethod
    def reset_instance(cls) -> None:
        """Forgets the process's instance (and the async manager's), so the next construction
        may use another configuration."""
        _common.forget_instances()

    @property
    def node_id(self) -> str:
        """This node's id."""
        return self._target.node_id

    @property
    def is_connected(self) -> bool:
        """Whether ``connect`` succeeded and ``disconnect`` was not called since."""
        return self._native is not None

    def connect(self) -> None:
        """Connects and checks that Redis answers; raises ``ConnectionError`` with a hint if not."""
        with self._lock:
            if self._native is None:
                self._native = self._target.connect().wait()

    def disconnect(self) -> None:
        """Drops the connection (producers and subscriptions keep their own until closed)."""
        with self._lock:
            self._native = None

    def _ensure_connected(self) -> None:
        if self._native is None:
            self.connect()

    def __enter__(self) -> "StateManager":
        self.connect()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.disconnect()

    start_stroke_session = _ops.blocking(_ops.start_stroke_session)
    update_stroke_progress = _ops.blocking(_ops.update_stroke_progress)
    get_stroke_progress = _ops.blocking(_ops.get_stroke_progress)
    end_stroke_session = _ops.blocking(_ops.end_stroke_session)
    update_robot_state = _ops.blocking(_ops.update_robot_state)
    get_robot_state = _ops.blocking(_ops.get_robot_state)
    update_node_health = _ops.blocking(_ops.update_node_health)
    get_node_health = _ops.blocking(_ops.get_node_health)
    get_all_nodes_health = _ops.blocking(_ops.get_all_nodes_health)
    publish_event = _ops.blocking(_ops.publish_event)
    report_error = _ops.blocking(_ops.report_error)
    clear_session_data = _ops.blocking(_ops.clear_session_data)
    get_system_status = _ops.blocking(_ops.get_system_status)

    def subscribe_events(self, *channels: str) -> Subscription:
        """Subscribes to ``channels`` (glob patterns such as ``stroke:events:*`` work)."""
        patterns = _common.channels(channels)
        self._ensure_connected()
        return Subscription(self._native.subscribe(patterns).wait())

    def follow(self, session_id: Optional[str] = None, cursor: Optional[str] = None) -> Follower:
        """Follows everything (or one session), from ``cursor`` when given."""
        self._ensure_connected()
        return Follower(self._native.follow(session_id, cursor))

    @property
    def params(self) -> Params:
        """The parameter server on this Redis."""
        return Params(self)

    def producer(self, max_queued: Optional[int] = None, poll_interval_us: Optional[int] = None) -> Producer:
        """A non-blocking writer for a control loop (arguments as the async manager's)."""
        self._ensure_connected()
        return Producer(self._native.producer(max_queued, poll_interval_us))
