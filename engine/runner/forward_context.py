"""Where the forward context used to live: it is engine/forward_context.py now (the layers read it,
and they must not import the runner). Kept so that imports of engine.runner.forward_context work."""
from ..forward_context import ForwardContext, forward_context, get_forward_context

__all__ = ["ForwardContext", "forward_context", "get_forward_context"]
