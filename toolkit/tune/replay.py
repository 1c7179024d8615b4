"""The tuner's search, replayed on a full grid's measurements: issue 12's "within 5% of the grid's best
while running at most 25% of its trials" check.

A grid tune (`opsctl tune --search grid`) measures every configuration of its space once. Here the
coordinate search (toolkit/tune/search.py, the tuner's own class) runs on that space with a trial
runner that looks each configuration up in the grid instead of measuring it again, so it makes the
decisions it would have made had those been its measurements: which configurations it asks for, in
what order, and which it chooses. Set beside the grid's best, that is the search's gap and its share
of the grid's trials, without a second tune's run-to-run noise in the comparison (a separate
coordinate tune measures again, and its figures move by a few % from the grid's).

    python -m toolkit.tune.replay reports/<grid run> [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .schema import Trial, TuneResult
from .search import Budget, CoordinateSearch, objective, trial_key
from .space import Space

GAP_GOAL = 0.05  # the search's choice within 5% of the grid's best
SHARE_GOAL = 0.25  # ... after at most 25% of the grid's trials


class ReplayError(Exception):
    pass


def replay(grid: TuneResult) -> dict:
    """The coordinate search on `grid`'s measurements: its trials, its choice, the grid's best, the gap."""
    from toolkit.deploy.models import config_from_flags

    if grid.search is None:  # written when the search ends: a tune cut short has none
        raise ReplayError(f"{grid.run_id}: the tune has not finished ({len(grid.trials)} trial(s) so far): "
                          "resume it (opsctl tune ... --resume)")
    if grid.search.strategy != "full grid":
        raise ReplayError(f"{grid.run_id}: not a full-grid tune (run opsctl tune --search grid)")
    measured = {trial_key(t.weight_format, t.engine): t for t in grid.trials if t.status != "skipped"}
    default = next((t for t in grid.trials if t.is_default), None)
    if default is None:
        raise ReplayError(f"{grid.run_id}: the grid has no default trial")
    axes = {k: v for k, v in grid.space.items() if k != "weight_format"}
    space = Space(weight_format=grid.space.get("weight_format", default.weight_format), axes=axes)
    base = config_from_flags(default.flags)  # the tune's base configuration (with any emulated memory)

    def look_up(trial: Trial) -> Trial:
        key = trial_key(trial.weight_format, trial.engine)
        if key not in measured:
            raise ReplayError(f"the search asked for {' '.join(trial.flags) or 'the defaults'}, which the grid "
                              "did not measure (the grid was cut short by its budget, or ran before grids took "
                              "each axis's base value)")
        return measured[key].model_copy(update={"trial_id": trial.trial_id, "is_default": trial.is_default})

    shadow = grid.model_copy(update={"trials": [], "chosen": None, "search": None}, deep=True)
    search = CoordinateSearch(space, base, shadow, look_up, save=lambda: None, budget=Budget())
    summary = search.run_search()
    ok = [t for t in grid.trials if t.status == "ok" and objective(t) > 0]
    best = max(ok, key=objective, default=None)
    chosen = shadow.trial(shadow.chosen) if shadow.chosen else None
    grid_trials = len(measured)
    gap = 1 - objective(chosen) / objective(best) if best is not None and chosen is not None else None
    share = search.new_trials / grid_trials if grid_trials else None

    def said(t: Trial | None) -> dict | None:
        return None if t is None else {"flags": t.flags, "output_tok_s": objective(t),
                                       "concurrency": t.best.concurrency if t.best else None}

    return {"grid_run": grid.run_id, "grid_size": grid.search.grid_size, "grid_trials": grid_trials,
            "grid_best": said(best), "search_trials": search.new_trials, "search_share": share,
            "search_choice": said(chosen), "gap": gap, "search_stop": summary.stop_reason,
            "visited": [t.flags for t in shadow.trials],
            "goal": {"gap_at_most": GAP_GOAL, "share_at_most": SHARE_GOAL},
            "meets_goal": gap is not None and share is not None and gap <= GAP_GOAL and share <= SHARE_GOAL}


def words(r: dict) -> str:
    best, choice = r["grid_best"], r["search_choice"]
    lines = [f"grid {r['grid_run']}: {r['grid_trials']} configurations measured (grid of {r['grid_size']})"]
    if best:
        lines.append(f"  grid's best:     {' '.join(best['flags']) or 'the defaults'}: {best['output_tok_s']:,.1f} tok/s")
    if choice:
        lines.append(f"  search's choice: {' '.join(choice['flags']) or 'the defaults'}: "
                     f"{choice['output_tok_s']:,.1f} tok/s")
    share = f"{r['search_share']:.0%}" if r["search_share"] is not None else "-"
    gap = f"{r['gap']:.1%}" if r["gap"] is not None else "-"
    lines.append(f"  the search ran {r['search_trials']} of {r['grid_trials']} trials ({share}, goal <= "
                 f"{SHARE_GOAL:.0%}); its choice is {gap} below the grid's best (goal <= {GAP_GOAL:.0%}): "
                 f"{'met' if r['meets_goal'] else 'NOT met'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a full-grid tune's folder (or its tune.json)")
    parser.add_argument("--json", type=Path, help="write the replay's figures here")
    args = parser.parse_args(argv)
    path = args.run / "tune.json" if args.run.is_dir() else args.run
    try:
        result = replay(TuneResult.read(path))
    except (OSError, ValueError, ReplayError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(words(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0 if result["meets_goal"] else 1


if __name__ == "__main__":
    sys.exit(main())
