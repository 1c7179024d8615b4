"""The coordinate search replayed on a full grid's measurements (toolkit/tune/replay.py): the trials it
asks for in order, its choice, its gap to the grid's best and its share of the grid, on synthetic grids
whose best is known; a space where one axis's best depends on another's is where it must say "not met"."""
from __future__ import annotations

import json

import pytest

from engine.config import EngineConfig
from toolkit.tune.replay import ReplayError, main, replay
from toolkit.tune.schema import LoadPoint, SearchSummary, Slo, Trial, TuneResult, TuneWorkload
from toolkit.tune.search import Budget, GridSearch
from toolkit.tune.space import Space

AXES = {"max_batch_size": [8, 16, 32, 64], "cache_max_entry_count": [0.5, 0.8],
        "max_prefill_token_num": [2048, 8192], "enable_prefix_caching": [False, True]}
BASE = EngineConfig()


def _grid(tok_s) -> TuneResult:
    """A full-grid tune of AXES as GridSearch runs it, configuration `engine` (every axis set) measuring
    tok_s(engine)."""
    def measure(trial: Trial) -> Trial:
        point = LoadPoint(concurrency=8, requests=32, output_tok_s=tok_s({**{k: getattr(BASE, k) for k in AXES},
                                                                          **trial.engine}),
                          request_s=1.0, meets_slo=True, slo_fraction=1.0)
        return trial.model_copy(update={"points": [point], "best": point})

    result = TuneResult(run_id="grid", model="m", target_profile="cpu",
                        workload=TuneWorkload(name="chat", input_len=64, output_len=32), slo=Slo(ttft_ms=1, tpot_ms=1),
                        space={"weight_format": "bf16", **AXES})
    result.search = GridSearch(Space("bf16", dict(AXES)), BASE, result, measure, lambda: None, Budget()).run_search()
    return result


def separable(e: dict) -> float:
    # each axis helps on its own, by more than the search's 5% noise margin: the grid's best is batch 32,
    # cache 0.8, prefill 2048, prefix on
    mbs = {None: 50, 8: 60, 16: 80, 32: 100, 64: 90}[e["max_batch_size"]]
    return mbs * (1.1 if e["cache_max_entry_count"] == 0.8 else 1.0) * (1.08 if e["max_prefill_token_num"] == 2048
                                                                         else 1.0) * (1.2 if e["enable_prefix_caching"] else 1.0)


def test_replay_finds_the_grids_best_in_a_quarter_of_its_trials():
    r = replay(_grid(separable))
    best = separable({"max_batch_size": 32, "cache_max_entry_count": 0.8, "max_prefill_token_num": 2048,
                      "enable_prefix_caching": True})
    assert r["grid_best"]["output_tok_s"] == pytest.approx(best)
    assert r["search_choice"]["flags"] == r["grid_best"]["flags"] and r["gap"] == pytest.approx(0.0)
    # the default, 4 batch sizes (the default's None is none of them), then one other value per axis; the
    # grid: (None + 4) x 2 x 2 x 2
    assert r["search_trials"] == 1 + 4 + 1 + 1 + 1 and r["grid_trials"] == r["grid_size"] == 40
    assert r["search_share"] == pytest.approx(8 / 40) and r["meets_goal"]
    assert r["visited"][0] == [] and r["visited"][1] == ["--max-batch-size", "8"]


def test_an_interaction_the_search_cannot_see_is_reported_not_met():
    # prefix caching pays only at batch 64, where batch 64 alone loses: coordinate ascent keeps 32
    def tangled(e):
        big = e["max_batch_size"] == 64
        return separable(e) * (1.5 if big and e["enable_prefix_caching"] else 1.0) / (1.2 if e["enable_prefix_caching"]
                                                                                     and not big else 1.0)
    r = replay(_grid(tangled))
    assert r["gap"] > 0.05 and not r["meets_goal"]
    assert "--max-batch-size" in r["grid_best"]["flags"] and "64" in r["grid_best"]["flags"]


def test_cli_and_bad_input(tmp_path, capsys):
    grid = _grid(separable)
    (tmp_path / "g").mkdir()
    grid.write(tmp_path / "g" / "tune.json")
    assert main([str(tmp_path / "g"), "--json", str(tmp_path / "r.json")]) == 0
    assert "met" in capsys.readouterr().out and json.loads((tmp_path / "r.json").read_text())["meets_goal"]
    coordinate = grid.model_copy(update={"search": SearchSummary(strategy="coordinate ascent", grid_size=40,
                                                                  trials_run=8, stop_reason="done")})
    with pytest.raises(ReplayError, match="not a full-grid tune"):
        replay(coordinate)
    unfinished = grid.model_copy(update={"search": None, "trials": grid.trials[:5]})  # cut short: no summary yet
    with pytest.raises(ReplayError, match=r"has not finished \(5 trial\(s\) so far\): resume it"):
        replay(unfinished)
    holed = grid.model_copy(update={"trials": [t for t in grid.trials if t.engine != {"max_batch_size": 16}]})
    with pytest.raises(ReplayError, match="did not measure"):
        replay(holed)
    assert main([str(tmp_path / "missing")]) == 2
