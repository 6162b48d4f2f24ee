"""Awaiting the Rust core's calls: one :class:`tatbot_state._native.Bridge` per asyncio loop.

``await call`` comes here (``Call.__await__``): the call runs on the shared tokio runtime, and
its result comes back through a socket pair the loop watches, so the loop's own thread resolves
the future and no tokio thread ever takes the GIL (see ``src/bridge.rs`` for why).
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any, Dict, Tuple

from tatbot_state import _native

#: Each running loop's bridge and the futures waiting on it, by call id; dropped with the loop.
_bridges: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Tuple[Any, Dict[int, asyncio.Future]]]" = weakref.WeakKeyDictionary()


def _attach(loop: asyncio.AbstractEventLoop) -> Tuple[Any, Dict[int, asyncio.Future]]:
    bridge = _native.Bridge()
    waiting: Dict[int, asyncio.Future] = {}

    def resolve() -> None:
        for call_id, value, ok in bridge.drain():
            future = waiting.pop(call_id, None)
            if future is None or future.done():
                continue  # its task was cancelled; the call ran to its end regardless
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    loop.add_reader(bridge.fileno(), resolve)
    entry = (bridge, waiting)
    _bridges[loop] = entry
    return entry


async def run(call: Any) -> Any:
    """Runs ``call`` and answers its result (or raises its exception) in the running loop."""
    loop = asyncio.get_running_loop()
    entry = _bridges.get(loop)
    if entry is None:
        entry = _attach(loop)
    bridge, waiting = entry
    future = loop.create_future()
    waiting[bridge.submit(call)] = future
    return await future
