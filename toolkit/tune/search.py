"""Which configurations to try: coordinate ascent from the default, one axis at a time.

The default configuration (what a user gets with no flags) is measured first, the same way as every
other, so the report can show what the tune bought. Then, axis by axis in order of expected effect
(max_batch_size, cache_max_entry_count, max_prefill_token_num, enable_prefix_caching), every value of
that axis is tried with the other axes at the best configuration so far; the best of the axis is kept
when it beats the incumbent by more than the noise margin. A value that brings a choice of its own comes
with each of its options in the same step (AWQ weights with each AWQ kernel: a faster kernel must not
wait for the slower one to win the format first). That is sum(len(axis) - 1) + 1 trials
against the grid's product (11 of 128 on the GPU space), and it finds the grid's best whenever the
axes' effects are roughly separable, which the full-grid run in the reports checks.

Objective: a configuration's goodput, the output tok/s of its highest load that meets the SLO (0 when
none does or the trial failed). Trials already in the store (`--resume`) are reused, never re-run.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from engine.config import EngineConfig

from .schema import SearchSummary, Trial, TuneResult
from .space import Space

# A change must beat the incumbent by 5% to count. Measured on one H200: the same configuration read
# 7,598 and 7,855 tok/s in two tunes (3.4% apart), and one trial's two 64-stream probes 6,667 and 6,229
# (6.6%); a smaller margin lets the choice follow the noise.
NOISE = 0.05


def objective(trial: Trial | None) -> float:
    return trial.best.output_tok_s if trial is not None and trial.status == "ok" and trial.best else 0.0


def beats(trial: Trial | None, incumbent: Trial | None) -> bool:
    """Whether `trial` replaces `incumbent`: faster by more than the noise margin. The one rule for every
    step of the search (a step that compared without it once chose a KV format on a 1% reading)."""
    return objective(trial) > objective(incumbent) * (1 + NOISE)


def trial_key(weight_format: str, engine: dict) -> str:
    return weight_format + "|" + ",".join(f"{k}={engine[k]}" for k in sorted(engine))


@dataclass
class Budget:
    max_trials: int | None = None
    deadline: float | None = None  # time.monotonic() seconds

    def spent(self, trials_run: int) -> str | None:
        if self.max_trials is not None and trials_run >= self.max_trials:
            return f"trial budget of {self.max_trials} spent"
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return "time budget spent"
        return None


class CoordinateSearch:
    def __init__(self, space: Space, base: EngineConfig, result: TuneResult, run: Callable[[Trial], Trial],
                 save: Callable[[], None], budget: Budget, fixed: dict | None = None):
        self.space, self.base, self.result, self.run, self.save, self.budget = space, base, result, run, save, budget
        self.fixed = dict(fixed or {})  # fields every trial carries (the emulated card's memory)
        self.by_key = {trial_key(t.weight_format, t.engine): t for t in result.trials if t.status != "skipped"}
        self.new_trials = 0

    def _trial(self, engine: dict, *, is_default: bool = False) -> Trial:
        """The measured trial of `engine` (its settings that differ from the base), run unless stored."""
        engine = {k: v for k, v in engine.items() if v != getattr(self.base, k)}  # one key per configuration
        key = trial_key(self.space.weight_format, engine)
        if key in self.by_key:
            return self.by_key[key]
        config = self.base.replace(**engine, **self.fixed)
        trial = Trial(trial_id=f"t{len(self.result.trials) + 1:02d}", weight_format=self.space.weight_format,
                      engine=engine, flags=config.to_flags(), is_default=is_default)
        trial = self.run(trial)
        self.result.trials.append(trial)
        self.by_key[key] = trial
        self.new_trials += 1
        self.save()  # after every trial: a killed tune resumes from here
        return trial

    def run_search(self) -> SearchSummary:
        stop = None
        incumbent = self._trial({}, is_default=True)
        best_engine: dict = {}
        for axis, values in self.space.axes.items():
            current = best_engine.get(axis, getattr(self.base, axis))
            for value in values:
                if value == current:
                    continue
                # a format with a kernel choice comes with each of its kernels (Space.with_kernels)
                for candidate in self.space.with_kernels({**best_engine, axis: value}, self.base):
                    if not self.space.applies(candidate, self.base):  # e.g. the AWQ kernel with 16-bit weights
                        continue
                    stop = self.budget.spent(len(self.result.trials))
                    if stop:
                        break
                    trial = self._trial(candidate)
                    if beats(trial, incumbent):
                        incumbent, best_engine = trial, candidate
                if stop:
                    break
            if stop:
                break
        # A stored trial off the ascent's path (a resumed tune's) may beat the incumbent: the same margin
        # decides, so a configuration within noise of the default never replaces it.
        best = max((t for t in self.result.trials if t.status == "ok"), key=objective, default=None)
        if best is not None and beats(best, incumbent):
            incumbent = best
        self.result.chosen = incumbent.trial_id if objective(incumbent) > 0 else None
        # counted, not derived from the axes' lengths: an axis pinned by --axis may hold no base value
        reason = stop or (f"every value of every axis tried once from the best so far "
                          f"({len(self.result.trials)} configurations)")
        return SearchSummary(strategy="coordinate ascent from the default, one axis at a time",
                             grid_size=len(self.space.grid(self.base)), trials_run=len(self.result.trials),
                             stop_reason=reason)


class GridSearch(CoordinateSearch):
    """Every configuration of the grid, the base's own values included (Space.grid), to check the
    coordinate search against (`--search grid`, then toolkit/tune/replay.py)."""

    def run_search(self) -> SearchSummary:
        self._trial({}, is_default=True)
        stop = None
        grid = self.space.grid(self.base)
        for engine in grid:
            changed = {k: v for k, v in engine.items() if v != getattr(self.base, k)}
            stop = self.budget.spent(len(self.result.trials))
            if stop:
                break
            self._trial(changed)
        ok = [t for t in self.result.trials if t.status == "ok" and objective(t) > 0]
        best = max(ok, key=objective, default=None)
        self.result.chosen = best.trial_id if best else None
        return SearchSummary(strategy="full grid", grid_size=len(grid),
                             trials_run=len(self.result.trials), stop_reason=stop or "grid done")
