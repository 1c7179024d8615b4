"""The `opsctl tune` HTML page (toolkit/tune/report.py): the headline and its gain over the default,
the Pareto front, the trial, pruned and failed tables, the emulated-card wording, links to the files
beside the page, escaping, and the page drawn in headless Chromium (tests/toolkit/browser.py).

Every expected figure below is worked out by hand from the hand-made trials, never by the code
under test.
"""
from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest

from toolkit.tune.report import gain_over_default, pareto_front, render_tune_report
from toolkit.tune.schema import (LoadPoint, Prediction, Pruned, SearchSummary, Slo, Trial, TuneResult,
                                 TuneWorkload)

from .browser import check_page, open_in_browser

HOSTILE = '<img src="x" onerror="alert(1)"></script><script>alert(2)</script>'
SLO = Slo(ttft_ms=500, tpot_ms=50)


def _point(c: int, tok_s: float, ttft: float, tpot: float, meets: bool, bench: str | None = None) -> LoadPoint:
    return LoadPoint(concurrency=c, requests=10 * c, output_tok_s=tok_s, request_s=tok_s / 128,
                     ttft_p50_ms=ttft / 2, ttft_p99_ms=ttft, tpot_p50_ms=tpot * 0.8, tpot_p99_ms=tpot,
                     slo_fraction=0.97 if meets else 0.4, slo_fraction_low=0.93 if meets else 0.3,
                     slo_fraction_high=0.99 if meets else 0.5, meets_slo=meets, bench_dir=bench)


def _trial(trial_id: str, flags: list[str], points: list[LoadPoint], *, default: bool = False,
           predicted: float | None = None, **kw) -> Trial:
    meeting = [p for p in points if p.meets_slo]
    best = max(meeting, key=lambda p: p.concurrency) if meeting else None
    return Trial(trial_id=trial_id, weight_format="bf16", engine={}, flags=flags, is_default=default,
                 points=points, best=best,
                 # the estimate for an emulated target card: half the measuring device's, to tell them apart
                 predicted=Prediction(output_tok_s=predicted, target_output_tok_s=predicted / 2) if predicted else None,
                 setup_s=kw.pop("setup_s", 40.0), setup_kind=kw.pop("setup_kind", "restart"), **kw)


def make_result(**overrides) -> TuneResult:
    """Four ok trials (t0 the default, t2 chosen) and one failed, two pruned configurations.

    Goodput (output tok/s at the highest load meeting the SLO): t0 300 (c=4), t1 500 (c=16),
    t2 540 (c=16), t4 290 (c=4); so t2 carries 540 / 300 = 1.80x the default's.
    """
    trials = [
        _trial("t0", [], [_point(1, 100, 100, 20, True, "t0-c1"), _point(4, 300, 200, 30, True, "t0-c4"),
                          _point(16, 600, 900, 60, False)], default=True, predicted=320),
        _trial("t1", ["--max-num-seqs", "64"], [_point(1, 110, 120, 22, True), _point(4, 330, 190, 29, True),
                                                _point(16, 500, 480, 48, True), _point(64, 700, 1100, 70, False)],
               setup_kind="reconfigure", setup_s=3.2),
        _trial("t2", ["--kv-cache-dtype", "fp8", "--max-num-seqs", "128"],
               [_point(1, 105, 95, 21, True), _point(4, 360, 170, 27, True),
                _point(16, 540, 400, 44, True, "t2-c16"), _point(64, 800, 1500, 80, False)], predicted=600),
        _trial("t3", ["--tensor-parallel-size", "2"], [], status="failed", setup_s=None, setup_kind="",
               reason="out of memory loading the weights: 3.2 GiB free of 24 GiB"),
        _trial("t4", ["--max-num-seqs", "32"], [_point(1, 100, 110, 20, True), _point(4, 290, 210, 31, True)],
               setup_kind="reconfigure", setup_s=2.9),
    ]
    fields = dict(
        run_id="tune-test", model="Qwen/Qwen2.5-0.5B-Instruct", target_profile="h200",
        measured_on={"name": "NVIDIA H200", "memory_gib": 139.8},
        workload=TuneWorkload(name="chat", input_len=512, output_len=256), slo=SLO,
        pruned=[Pruned(engine={"max_num_seqs": 1024}, weight_format="bf16",
                       reason="the KV cache holds 310 sequences of this workload, not 1024"),
                Pruned(engine={}, weight_format="awq", reason="no AWQ checkpoint of this model")],
        trials=trials, chosen="t2", why="the most output tok/s within the SLO",
        search=SearchSummary(strategy="grid", grid_size=12, trials_run=5, stop_reason="the budget of 5 trials ran out"),
        space={"max_num_seqs": [32, 64, 128], "kv_cache_dtype": ["auto", "fp8"]},
        notes=["a note from the tune"])
    fields.update(overrides)
    return TuneResult(**fields)


def _visible(page: str) -> str:
    """The page's text without tags and scripts (the chart data), roughly what a reader sees."""
    page = re.sub(r"<script.*?</script>", " ", page, flags=re.S)
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page)))


def _section(page: str, element_id: str) -> str:
    start = page.index(f'id="{element_id}"')
    return _visible(page[start:page.index("</section>", start)])


def _render(tmp_path: Path, result: TuneResult, **kw) -> tuple[Path, str]:
    page = render_tune_report(result, tmp_path, **kw)
    return page, page.read_text(encoding="utf-8")


# ---------------------------------------------------------------- the Pareto front

def test_pareto_front_keeps_only_points_nothing_beats_on_both():
    points = [(10, 5), (20, 10), (15, 12), (5, 1), (25, 30), (24, 30), (20, 10), (5, 2)]
    # (15, 12): (20, 10) has more tok/s at less latency. (24, 30): (25, 30) more at the same latency.
    # (5, 2): (5, 1) the same tok/s at less latency. The two (20, 10) tie: neither beats the other.
    assert pareto_front(points) == [0, 1, 3, 4, 6]
    assert pareto_front([]) == [] and pareto_front([(1, 1)]) == [0]


def test_the_page_draws_and_lists_the_front_of_every_trials_points(tmp_path):
    _, page = _render(tmp_path, make_result())
    rows = re.findall(r"<tr><td class=\"text\">(t\d)</td><td>(\d+)</td>.*?<td class=\"text\">(.*?)</td></tr>",
                      page[page.index('id="front"'):page.index("</table>", page.index('id="front"'))], re.S)
    front = {(t, int(c)): on for t, c, on in rows}
    # By hand, (tok/s, TTFT p99) of all 13 points: t2 c=1 (105, 95) beats t0 c=1 and t4 c=1; t2 c=4
    # (360, 170) beats t1 c=4, t0 c=4, t4 c=4; t2 c=16 (540, 400) beats t1 c=16. TPOT p99: as TTFT, but
    # t0 c=1 and t4 c=1 tie at (100, 20), nothing beats them, so both are on that front.
    both = {("t2", 1), ("t1", 1), ("t2", 4), ("t2", 16), ("t0", 16), ("t1", 64), ("t2", 64)}
    assert front == {**{k: "TTFT p99 and TPOT p99" for k in both}, ("t0", 1): "TPOT p99", ("t4", 1): "TPOT p99"}
    # The chart's front traces hold the same points, in latency order (TTFT panel first).
    traces = json.loads(re.search(r'Plotly\.newPlot\(\s*"tune-throughput-latency",\s*(\[.*?\]),\s*\{', page,
                                  re.S).group(1))
    fronts = [t for t in traces if t["name"] == "Pareto front"]
    assert [list(zip(t["x"], t["y"])) for t in fronts] == [
        [(95, 105), (120, 110), (170, 360), (400, 540), (900, 600), (1100, 700), (1500, 800)],
        [(20, 100), (20, 100), (21, 105), (22, 110), (27, 360), (44, 540), (60, 600), (70, 700), (80, 800)]]


# ---------------------------------------------------------------- the headline

def test_headline_names_the_choice_its_load_and_its_gain_over_the_default(tmp_path):
    result = make_result()
    gain, _ = gain_over_default(result)
    assert gain == pytest.approx(540 / 300)
    _, page = _render(tmp_path, result)
    head = _section(page, "headline")
    assert "Chosen: t2 · --kv-cache-dtype fp8 --max-num-seqs 128" in head
    assert ("Carries 16 concurrent streams at 540.0 output tok/s within the SLO: 97% of requests met it "
            "(93%–99% at 95%).") in head
    assert "1.80x the default's goodput at the same SLO (default: 300.0 output tok/s at c=4)." in head
    assert "Why: the most output tok/s within the SLO" in head
    assert "TTFT p99 <= 500 ms and TPOT p99 <= 50 ms for at least 90% of requests" in head
    assert "memory capped" not in _visible(page) and "planner estimates" not in _visible(page)


def test_headline_when_the_default_is_chosen_failed_or_met_the_slo_nowhere(tmp_path):
    chosen_default = make_result(chosen="t0")
    assert gain_over_default(chosen_default)[0] == 1.0
    _, page = _render(tmp_path / "a", chosen_default)
    assert "The default configuration is the chosen one" in _section(page, "headline")
    assert "Chosen: t0 · no flags (the default configuration)" in _section(page, "headline")

    failed = make_result()
    failed.trials[0] = failed.trials[0].model_copy(update=dict(status="failed", points=[], best=None,
                                                               reason="engine exited: CUDA error"))
    _, page = _render(tmp_path / "b", failed)
    assert gain_over_default(failed)[0] is None
    assert ("The default configuration failed (engine exited: CUDA error), so there is no gain over it to "
            "state.") in _section(page, "headline")

    nowhere = make_result()
    nowhere.trials[0] = nowhere.trials[0].model_copy(update=dict(best=None))
    _, page = _render(tmp_path / "c", nowhere)
    assert "The default configuration met the SLO at no load tried" in _section(page, "headline")

    none = make_result(chosen=None, why="no configuration met the SLO")
    _, page = _render(tmp_path / "d", none)
    assert "No configuration was chosen: none met the SLO at any load tried." in _section(page, "headline")


# ---------------------------------------------------------------- tables, reasons, emulation

def test_trial_table_pruned_and_failed_reasons(tmp_path):
    _, page = _render(tmp_path, make_result())
    table = page[page.index('id="trial-table"'):page.index("</table>", page.index('id="trial-table"'))]
    order = re.findall(r'data-trial="(t\d)"', table)
    assert order == ["t2", "t1", "t0", "t4", "t3"]  # by goodput, the failed one last
    rows = {t: _visible(r) for t, r in re.findall(r'data-trial="(t\d)"[^>]*>(.*?)</tr>', table, re.S)}
    # t2: best c=16, 540 tok/s, TTFT p99 400 ms, TPOT p99 44 ms; predicted 600 -> (600 - 540) / 540 = +11%.
    assert re.sub(r"\s+", " ", rows["t2"]).strip() == (
        "t2 chosen --kv-cache-dtype fp8 --max-num-seqs 128 bf16 ok 40.0 s restart 16 540.0 400.0 44.0 "
        "97% (93%–99%) 600.0 +11% (over)")
    # t0: predicted 320 against 300 measured -> +7%.
    assert "320.0 +7% (over)" in rows["t0"] and "default" in rows["t0"]
    assert "3.2 s reconfigure" in rows["t1"]
    assert "failed" in rows["t3"] and "out of memory loading the weights: 3.2 GiB free of 24 GiB" in rows["t3"]
    excluded = _section(page, "excluded")
    assert "max_num_seqs=1024 bf16 the KV cache holds 310 sequences of this workload, not 1024" in excluded
    assert "the engine's defaults awq no AWQ checkpoint of this model" in excluded
    assert ("t3 ( --tensor-parallel-size 2 ) failed: out of memory loading the weights: 3.2 GiB free of 24 GiB"
            in excluded)
    setup = _section(page, "setup")
    for expected in ("TTFT p99 <= 500 ms and TPOT p99 <= 50 ms", "chat: 512 prompt tokens, 256 output tokens",
                     "NVIDIA H200; memory_gib: 139.8",
                     "grid: 5 trials run of a grid of 12; stopped because the budget of 5 trials ran out",
                     "Axis: max_num_seqs 32, 64, 128", "a note from the tune"):
        assert expected in setup, expected
    assert "scaled for the CPU" not in setup


def test_emulated_run_says_target_speeds_are_planner_estimates(tmp_path):
    result = make_result(target_profile="L4", emulated=True,
                         workload=TuneWorkload(name="chat", input_len=64, output_len=32, scaled_for_cpu=True))
    _, page = _render(tmp_path, result)
    text = _visible(page)
    head = _section(page, "headline")
    assert "within the SLO on the NVIDIA H200 (memory capped to the L4's)" in head
    assert "On the L4 itself the planner estimates 300.0 output tok/s at c=16: an estimate, not a measurement." in head
    assert "emulated: memory capped to the target's" in text
    assert "speeds for the target card are planner estimates" in text
    # the table's prediction is for the device that measured, so its error against the measurement is real
    assert "Predicted tok/s (measuring device)" in text and "600.0 +11% (over)" in text
    assert "chat: 64 prompt tokens, 32 output tokens, scaled for the CPU" in text


# ---------------------------------------------------------------- files beside the page, plotly.js

def test_links_only_to_files_that_are_there(tmp_path):
    (tmp_path / "launch.sh").write_text("#!/bin/sh\n")
    (tmp_path / "t0-c1").mkdir()
    (tmp_path / "t2-c16").mkdir()
    (tmp_path / "t2-c16" / "report.html").write_text("<html></html>")
    (tmp_path / "javascript:alert(1)").mkdir()
    result = make_result()
    result.trials[4].points[0].bench_dir = "javascript:alert(1)"
    result.trials[4].points[1].bench_dir = "../outside"
    _, page = _render(tmp_path, result)
    hrefs = re.findall(r'<a href="([^"#]+)"', page)
    assert sorted(hrefs) == sorted(["launch.sh", "t0-c1/", "t2-c16/report.html", "javascript%3Aalert%281%29/"])
    assert "deploy.yaml" not in page  # not written, so not linked
    assert "bench_dir '../outside' points outside the result's folder" in _section(page, "setup")
    assert '<script src="plotly.min.js"></script>' in page and (tmp_path / "plotly.min.js").is_file()


def test_single_file_export_inlines_plotly(tmp_path):
    page, text = _render(tmp_path, make_result(), inline=True)
    assert not re.search(r"<script[^>]+src=", text) and "plotly.js v" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]


# ---------------------------------------------------------------- escaping, and the page in a browser

def _hostile() -> TuneResult:
    result = make_result(model=f"evil{HOSTILE}", notes=[HOSTILE], why=HOSTILE,
                         measured_on={"name": HOSTILE})
    result.trials[1] = result.trials[1].model_copy(update=dict(trial_id=f"t1{HOSTILE}", flags=["--x", HOSTILE]))
    result.trials[3] = result.trials[3].model_copy(update=dict(reason=HOSTILE))
    result.pruned[0] = result.pruned[0].model_copy(update=dict(reason=HOSTILE, engine={HOSTILE: HOSTILE}))
    return result


def test_data_is_escaped_everywhere(tmp_path):
    _, page = _render(tmp_path, _hostile())
    assert "<script>alert" not in page and "<img" not in page
    assert page.count("</script>") == page.count("<script")  # no script closed early by the data
    text = _visible(page)
    assert f"opsctl tune: evil{HOSTILE} for h200" in text and f"Why: {HOSTILE}" in text


def test_the_page_draws_in_chromium(browser, tmp_path):
    page, _ = _render(tmp_path, make_result())
    shot = tmp_path / "tune.png"
    seen = open_in_browser(browser, page, shot, min_charts=2)
    check_page(seen, shot, {"tune-throughput-latency", "tune-ladder"})
    traces = {c["id"]: c["traces"] for c in seen["charts"]}
    # 4 ok trials + front + SLO + chosen star + default diamond, in each of two panels; the ladder:
    # 4 trials in three panels + an SLO line in the two latency panels.
    assert traces == {"tune-throughput-latency": 16, "tune-ladder": 14}
    assert "The charts need" not in seen["text"]
    assert "1.80x the default's goodput at the same SLO" in seen["text"]


def test_hostile_page_runs_no_script_in_chromium(browser, tmp_path):
    page, _ = _render(tmp_path, _hostile())
    shot = tmp_path / "hostile.png"
    seen = open_in_browser(browser, page, shot, min_charts=2)
    check_page(seen, shot, {"tune-throughput-latency", "tune-ladder"})
    assert HOSTILE in seen["text"]


# ---------------------------------------------------------------- quality of each format

def test_each_format_that_ran_is_scored_once_stored_first_and_shown_beside_its_speed(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from rich.console import Console

    from engine.config import EngineConfig
    from toolkit.tune import quality

    result = make_result()
    result.trials[1].engine = {"model_format": "int8", "max_batch_size": 64}
    result.trials[2].engine = {"model_format": "awq", "quant_policy": 8}
    result.trials[3].engine = {"model_format": "awq"}  # failed: not scored
    calls = []
    ppl = {(None, 0): 10.0, ("int8", 0): 10.05, ("awq", 8): 10.9}

    def fake(model, config):
        calls.append((config.model_format, config.quant_policy, config.gpu_memory_gb))
        return {"perplexity": ppl[(config.model_format, config.quant_policy)], "error": None}

    monkeypatch.setattr(quality, "_perplexity", fake)
    options = SimpleNamespace(base=EngineConfig(), model="preset:qwen2.5-7b")
    result.quality = quality.score_formats(result, options, {"gpu_memory_gb": 24.0}, Console(file=open("/dev/null", "w")))
    assert calls == [(None, 0, 24.0), ("awq", 8, 24.0), ("int8", 0, 24.0)]  # the emulated cap goes along
    assert [round(q["ratio_to_stored"], 3) for q in result.quality] == [1.0, 1.09, 1.005]
    _, page = _render(tmp_path, result)
    text = _section(page, "quality")
    assert "AWQ int4 weights, int8 KV cache 10.9000 1.0900x 540.0 tok/s at 16 streams (t2)" in text
    assert "int8 weights, 16-bit KV cache 10.0500 1.0050x 500.0 tok/s at 16 streams (t1)" in text


def test_a_format_whose_perplexity_failed_says_why(tmp_path):
    result = make_result(quality=[{"model_format": "awq", "quant_policy": 0, "words": "AWQ int4 weights, 16-bit KV cache",
                                   "perplexity": None, "error": "timed out after 420 s"}])
    _, page = _render(tmp_path, result)
    assert "not measured" in _section(page, "quality") and "timed out after 420 s" in _section(page, "quality")


# ---------------------------------------------------------------- committed GPU tunes

COMMITTED_TUNES = sorted((Path(__file__).resolve().parents[2] / "reports" / "examples").glob("tune-*/tune.json"))


@pytest.mark.parametrize("path", COMMITTED_TUNES, ids=lambda p: p.parent.name)
def test_committed_tunes_render_their_choice_and_reasons(path, tmp_path):
    result = TuneResult.read(path)
    chosen = result.trial(result.chosen)
    assert chosen is not None and chosen.best is not None
    _, page = _render(tmp_path, result)
    text = _visible(page)
    assert f"{chosen.best.output_tok_s:,.1f}" in text and result.why.split(",")[0] in text
    for name in ("launch.sh", "deploy.yaml", "trials.csv"):  # committed beside it
        assert (path.parent / name).is_file(), name
    # a choice among at least three measured configurations
    assert len(result.trials) >= 3 and all(t.status == "ok" or t.reason for t in result.trials)
