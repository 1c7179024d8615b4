"""The executor interface: what the engine asks of whatever runs the model, on one rank or several.

LLMEngine talks to an Executor only, with plain data both ways: a StepPlan in (engine/step_plan.py),
a StepResult out (sampled ids, logprobs). `runner` is rank 0's ModelRunner, in the engine's process in
every executor: the engine and the tools read the device, dtype, weights and KV-cache facts from it.
"""
from __future__ import annotations

from ..config import EngineConfig
from ..runner.model_runner import InFlightStep, ModelRunner, StepResult
from ..step_plan import StepPlan


class Executor:
    runner: ModelRunner

    def allocate(self, config: EngineConfig, max_batch_size: int) -> None:
        """KV cache, input buffers and decode graphs for `config` on every rank (runner.num_blocks after)."""
        raise NotImplementedError

    def launch(self, plan: StepPlan) -> InFlightStep:
        """Start the step on every rank; rank 0's part is collected with `collect`."""
        raise NotImplementedError

    def collect(self, step: InFlightStep) -> StepResult:
        return self.runner.collect(step)

    def run(self, plan: StepPlan) -> StepResult:
        """launch + collect: one step, synchronously."""
        return self.collect(self.launch(plan))

    def check_health(self) -> None:
        """Raise EngineDeadError if a rank has died (nothing for a single rank: it is this process)."""

    @property
    def sentinels(self) -> list:
        """Waitable handles that become ready when a worker process ends (multiprocessing.connection.wait),
        so an idle engine loop notices a death without polling."""
        return []

    def shutdown(self) -> None:
        """Stop the worker processes, if any, and leave the process group; idempotent."""
