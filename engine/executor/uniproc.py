"""UniProcExecutor: tp 1, the model runner in the engine's own process (no workers, no collectives)."""
from __future__ import annotations

from ..config import EngineConfig
from ..runner.model_runner import InFlightStep, ModelRunner
from ..step_plan import StepPlan
from .base import Executor


class UniProcExecutor(Executor):
    def __init__(self, config: EngineConfig, source, session_len: int):
        self.runner = ModelRunner(config, source, session_len)

    def allocate(self, config: EngineConfig, max_batch_size: int) -> None:
        self.runner.allocate(config, max_batch_size)

    def launch(self, plan: StepPlan) -> InFlightStep:
        return self.runner.launch(plan)
