"""Type stubs of tatbot_state: the async StateManager, Params, Producer, models and errors."""

from types import TracebackType
from typing import Any, AsyncIterator, Dict, List, Optional, Type

from tatbot_state.models import NodeHealth as NodeHealth
from tatbot_state.models import RobotState as RobotState
from tatbot_state.models import StrokeProgress as StrokeProgress
from tatbot_state.producer import Producer as Producer

__version__: str

class CorruptError(ValueError):
    """A stored value or a message breaks the wire contract."""

class NotFoundError(LookupError):
    """A session or parameter does not exist."""

class ConflictError(RuntimeError):
    """A race with another writer was lost; nothing was written."""

class Params:
    """Typed, validated runtime parameters; every call is awaited."""

    async def declare(
        self,
        name: str,
        default: Any,
        description: str = "",
        min: Optional[float] = None,
        max: Optional[float] = None,
        step: Optional[float] = None,
        read_only: bool = False,
    ) -> Dict[str, Any]: ...
    async def get(self, name: str) -> Optional[Dict[str, Any]]: ...
    async def value(self, name: str) -> Any: ...
    async def set(self, name: str, value: Any, if_version: Optional[int] = None) -> Dict[str, Any]: ...
    async def list(self, prefix: str = "") -> List[Dict[str, Any]]: ...
    async def dump(self, prefix: str = "") -> str: ...
    async def load(self, text: str, prefix: str = "") -> Dict[str, Any]: ...

class StateManager:
    """The fleet's async StateManager over the Rust core; one instance per process."""

    current_session_id: Optional[str]
    def __new__(
        cls,
        redis_host: Optional[str] = None,
        redis_port: Optional[int] = None,
        redis_password: Optional[str] = None,
        node_id: Optional[str] = None,
    ) -> StateManager: ...
    def __init__(
        self,
        redis_host: Optional[str] = None,
        redis_port: Optional[int] = None,
        redis_password: Optional[str] = None,
        node_id: Optional[str] = None,
    ) -> None: ...
    @classmethod
    def reset_instance(cls) -> None: ...
    @property
    def node_id(self) -> str: ...
    @property
    def redis_host(self) -> str: ...
    @property
    def redis_port(self) -> int: ...
    @property
    def is_connected(self) -> bool: ...
    @property
    def params(self) -> Params: ...
    async def connect(self) -> None: ...
    async def disconnect(self) -> None: ...
    async def __aenter__(self) -> StateManager: ...
    async def __aexit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None: ...
    async def start_stroke_session(self, total_strokes: int, stroke_length: int, scene_name: str = "default") -> str: ...
    async def update_stroke_progress(
        self,
        stroke_idx: int,
        pose_idx: int = 0,
        stroke_description_l: str = "",
        stroke_description_r: str = "",
        offset_idx_l: int = 0,
        offset_idx_r: int = 0,
        session_id: Optional[str] = None,
    ) -> None: ...
    async def get_stroke_progress(self, session_id: Optional[str] = None) -> Optional[StrokeProgress]: ...
    async def end_stroke_session(self, session_id: Optional[str] = None) -> None: ...
    async def update_robot_state(self, robot_state: RobotState) -> None: ...
    async def get_robot_state(self, node_id: Optional[str] = None) -> Optional[RobotState]: ...
    async def update_node_health(self, health: Optional[NodeHealth] = None) -> None: ...
    async def get_node_health(self, node_id: Optional[str] = None) -> Optional[NodeHealth]: ...
    async def get_all_nodes_health(self) -> Dict[str, NodeHealth]: ...
    async def publish_event(self, channel: str, event_data: Dict[str, Any]) -> None: ...
    def subscribe_events(self, *channels: str) -> AsyncIterator[Dict[str, Any]]: ...
    async def report_error(
        self, error_category: str, error_message: str, details: Optional[Dict[str, Any]] = None
    ) -> None: ...
    async def clear_session_data(self, session_id: str) -> bool: ...
    async def get_system_status(self) -> Dict[str, Any]: ...
    def follow(self, session_id: Optional[str] = None, cursor: Optional[str] = None) -> AsyncIterator[Dict[str, Any]]: ...
    def producer(self, max_queued: Optional[int] = None, poll_interval_us: Optional[int] = None) -> Producer: ...

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
