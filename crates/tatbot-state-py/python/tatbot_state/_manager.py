"""The async :class:`StateManager`: the fleet's old API over the Rust core.

Same constructor, methods, arguments, defaults and return types as the old Python manager;
each call is one round trip of the Rust core (a Lua script for multi-key writes) instead of
four, with no sleeps in the caller. One instance per process, as before.
"""

from __future__ import annotations

import json
from typing import Any, AsyncIterator, Dict, Optional

from tatbot_state import _common, _native, _ops
from tatbot_state.producer import Producer


class Params:
    """Typed, validated runtime parameters (``state.params``); every call is awaited."""

    def __init__(self, owner: Any) -> None:
        self._owner = owner

    @property
    def _native(self) -> Any:
        return self._owner._native

    async def _ensure_connected(self) -> None:
        await self._owner._ensure_connected()

    declare = _ops.awaited(_ops.param_declare, "declare")
    get = _ops.awaited(_ops.param_get, "get")
    value = _ops.awaited(_ops.param_value, "value")
    set = _ops.awaited(_ops.param_set, "set")
    list = _ops.awaited(_ops.param_list, "list")
    dump = _ops.awaited(_ops.param_dump, "dump")
    load = _ops.awaited(_ops.param_load, "load")


class StateManager:
    """Reads and writes tatbot state; ``async with StateManager(node_id="hog") as state: ...``.

    ``redis_host``, ``redis_port`` and ``redis_password`` default to the configuration the CLI
    uses (Hydra YAML, env file, ``REDIS_*`` variables); ``node_id`` to the host name.
    Constructing it again with the same configuration returns the same instance; with another
    configuration it raises ``ValueError`` (one instance per process).
    """

    def __new__(
        cls,
        redis_host: Optional[str] = None,
        redis_port: Optional[int] = None,
        redis_password: Optional[str] = None,
        node_id: Optional[str] = None,
    ) -> "StateManager":
        target = _native.Target(node_id if node_id is not None else _common.default_node_id(), redis_host, redis_port, redis_password)
        return _common.one_instance(cls, "tatbot_state.StateManager", target, cls._setup)

    def _setup(self) -> None:
        self._native = None
        self._entered = 0
        self._connect_lock = None
        self.current_session_id = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Everything is set up in __new__, which may return the existing instance.
        pass

    @classmethod
    def reset_instance(cls) -> None:
        """Forgets the process's instance (and the blocking facade's), so the next construction
        may use another configuration."""
        _common.forget_instances()

    @property
    def node_id(self) -> str:
        """This node's id."""
        return self._target.node_id

    @property
    def redis_host(self) -> str:
        """The Redis host, as resolved."""
        return self._target.host

    @property
    def redis_port(self) -> int:
        """The Redis port, as resolved."""
        return self._target.port

    @property
    def is_connected(self) -> bool:
        """Whether ``connect`` succeeded and ``disconnect`` was not called since."""
        return self._native is not None

    async def connect(self) -> None:
        """Connects and checks that Redis answers; raises ``ConnectionError`` with a hint if not."""
        if self._native is None:
            self._native = await self._target.connect()

    async def disconnect(self) -> None:
        """Drops the connection (producers and subscriptions keep their own until closed)."""
        self._native = None

    async def _ensure_connected(self) -> None:
        if self._native is None:
            await self.connect()

    async def __aenter__(self) -> "StateManager":
        await self.connect()
        self._entered += 1
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self._entered -= 1
        if self._entered == 0:
            await self.disconnect()

    start_stroke_session = _ops.awaited(_ops.start_stroke_session)
    update_stroke_progress = _ops.awaited(_ops.update_stroke_progress)
    get_stroke_progress = _ops.awaited(_ops.get_stroke_progress)
    end_stroke_session = _ops.awaited(_ops.end_stroke_session)
    update_robot_state = _ops.awaited(_ops.update_robot_state)
    get_robot_state = _ops.awaited(_ops.get_robot_state)
    update_node_health = _ops.awaited(_ops.update_node_health)
    get_node_health = _ops.awaited(_ops.get_node_health)
    get_all_nodes_health = _ops.awaited(_ops.get_all_nodes_health)
    publish_event = _ops.awaited(_ops.publish_event)
    report_error = _ops.awaited(_ops.report_error)
    clear_session_data = _ops.awaited(_ops.clear_session_data)
    get_system_status = _ops.awaited(_ops.get_system_status)

    async def subscribe_events(self, *channels: str) -> AsyncIterator[Dict[str, Any]]:
        """Yields ``{"channel", "data", "pattern"}`` for each message on ``channels`` (glob
        patterns such as ``stroke:events:*`` work); reconnects by itself and fills gaps from the
        event log."""
        patterns = _common.channels(channels)
        await self._ensure_connected()
        subscription = await self._native.subscribe(patterns)
        try:
            while True:
                raw = await subscription.next()
                if raw is None:
                    return
                yield _common.message(raw)
        finally:
            subscription.close()

    async def follow(self, session_id: Optional[str] = None, cursor: Optional[str] = None) -> AsyncIterator[Dict[str, Any]]:
        """Yields a snapshot, then every change (each with the ``cursor`` to resume after it);
        from ``cursor``, replays what came after it. Items are dicts with a ``type``:
        ``snapshot``, ``change``, ``resync``, ``connection_lost`` or ``reconnected``."""
        await self._ensure_connected()
        follower = self._native.follow(session_id, cursor)
        try:
            while True:
                raw = await follower.next()
                if raw is None:
                    return
                yield json.loads(raw)
        finally:
            follower.close()

    @property
    def params(self) -> Params:
        """The parameter server on this Redis."""
        return Params(self)

    def producer(self, max_queued: Optional[int] = None, poll_interval_us: Optional[int] = None) -> Producer:
        """A non-blocking writer for a control loop (synchronous; needs a connected manager).

        ``max_queued`` bounds the queued progress updates and errors (default 100,000; past it
        the oldest is dropped and counted). With ``poll_interval_us`` the writer is polled at
        that interval instead of woken by each call: calls then make no system call, for loops
        that need the call's tail short, at up to one interval of extra latency."""
        if self._native is None:
            raise ConnectionError("the StateManager is not connected; hint: await state.connect() (or use async with) first")
        return Producer(self._native.producer(max_queued, poll_interval_us))
