"""tatbot-state for Python: the fleet's ``StateManager`` API over the Rust core.

- :class:`StateManager`: the old async API, unchanged (``async with``, ``subscribe_events``).
- :class:`Producer` (``state.producer()``): synchronous, non-blocking writes for control loops.
- :mod:`tatbot_state.sync`: the same API as blocking calls, for threads and GUIs.
- :class:`RobotState`, :class:`StrokeProgress`, :class:`NodeHealth`: the wire's documents.

Errors: bad arguments raise ``TypeError``/``ValueError``; Redis unreachable ``ConnectionError``;
a timeout ``TimeoutError``; refused credentials or ACL ``PermissionError``; a stored value that
breaks the wire contract :class:`CorruptError` (a ``ValueError``); a missing session or parameter
:class:`NotFoundError` (a ``LookupError``); a lost compare-and-set :class:`ConflictError` (a
``RuntimeError``). Messages are the Rust core's one-line errors. See docs/PYTHON.md.
"""

from tatbot_state._native import ConflictError, CorruptError, NotFoundError, __version__
from tatbot_state._manager import Params, StateManager
from tatbot_state.models import NodeHealth, RobotState, StrokeProgress
from tatbot_state.producer import Producer

__all__ = [
    "StateManager",
    "Params",
    "Producer",
    "RobotState",
    "StrokeProgress",
    "NodeHealth",
    "CorruptError",
    "NotFoundError",
    "ConflictError",
    "__version__",
]
