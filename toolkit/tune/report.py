"""The HTML page of one `opsctl tune` run: `render_tune_report(result, out_dir)`.

The page says, from the TuneResult alone: the chosen configuration, the load it carries within the
SLO and its gain over the default configuration measured the same way (the headline); every load
point of every trial as output tok/s against p99 TTFT and TPOT, with the Pareto front and the SLO
limits drawn; each trial's ladder against concurrency; the trials, the pruned and the failed
configurations with their reasons; the SLO, workload, devices and search in words; links to the
files the tune wrote beside it (launch.sh, deploy.yaml, each point's bench folder).

Charts are plotly figures in toolkit.report.charts' palette and style; the page is
toolkit/report/templates/tune.html.j2 (jinja2, autoescaped: only the chart fragments and plotly.js
are |safe). plotly.js goes where `opsctl report` puts it: written once to out_dir/plotly.min.js
(bench pages in the tune folder's point folders load the same file from ../), or inlined for a
single-file export (inline=True).
"""
from __future__ import annotations

import html
import os
import shlex
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from toolkit.report import charts, words
from toolkit.report.paths import UnsafePathError, file_in_result_dir
from toolkit.report.render import ReportError, _environment, _opsctl_version

from .schema import LoadPoint, Trial, TuneResult

PAGE_FILE = "report.html"
TEMPLATE_FILE = "tune.html.j2"
# Files the tune writes beside the page, linked when they are there.
ARTIFACTS = (("launch.sh", "the chosen configuration as an opsctl serve command"),
             ("deploy.yaml", "a Kubernetes deployment of the chosen configuration"))
# The latencies the SLO limits: (LoadPoint field, label, Slo field). LoadPoint keeps p50 and p99;
# the SLO's own percentile is p99 unless a workload says otherwise (then the page notes it).
LATENCIES = (("ttft_p99_ms", "TTFT p99", "ttft_ms"), ("tpot_p99_ms", "TPOT p99", "tpot_ms"))
SAME_GAIN = 0.005  # gains within 0.5% of 1 read "the same goodput"


# ---------------------------------------------------------------- what the figures say

def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices (in input order) of the (output tok/s, latency) points that no other point dominates.

    A point dominates another when it has at least its throughput at no more latency, and is better
    in one of the two; equal points do not dominate each other, so both stay on the front.
    """
    def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
        return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])

    return [i for i, p in enumerate(points) if not any(dominates(q, p) for q in points)]


def flags_text(trial: Trial) -> str:
    """The trial's serve flags as one would type them (quoted where needed)."""
    return shlex.join(trial.flags) if trial.flags else "no flags (the default configuration)"


def default_trial(result: TuneResult) -> Trial | None:
    return next((t for t in result.trials if t.is_default), None)


def _at(point: LoadPoint) -> str:
    return f"{words.rate(point.output_tok_s)} output tok/s at c={point.concurrency}"


def gain_over_default(result: TuneResult) -> tuple[float | None, str]:
    """(chosen goodput / default goodput, the comparison in words): goodput being the output tok/s
    at each trial's highest load meeting the SLO. No ratio where either side has no such load."""
    chosen = result.trial(result.chosen) if result.chosen else None
    default = default_trial(result)
    if chosen is None or chosen.best is None:
        return None, ""
    if default is None:
        return None, "The default configuration was not measured in this run, so no gain over it is stated."
    if default.trial_id == chosen.trial_id:
        return 1.0, ("The default configuration is the chosen one: no configuration tried carried more "
                     "within the SLO.")
    if default.status != "ok":
        return None, (f"The default configuration {default.status} ({default.reason or 'no reason recorded'}), "
                      f"so there is no gain over it to state.")
    if default.best is None:
        return None, ("The default configuration met the SLO at no load tried, so it carries nothing within "
                      "it; the chosen one carries " + _at(chosen.best) + ".")
    gain = chosen.best.output_tok_s / default.best.output_tok_s if default.best.output_tok_s > 0 else None
    if gain is None:
        return None, "The default configuration's goodput is zero, so no ratio is stated."
    if abs(gain - 1) < SAME_GAIN:
        text = "the same goodput as the default at the same SLO"
    elif gain > 1:
        text = f"{words.times(gain)} the default's goodput at the same SLO"
    else:  # chosen for something other than goodput: said as a share, never as "0.9x"
        text = f"{gain:.0%} of the default's goodput at the same SLO"
    return gain, f"{text[0].upper()}{text[1:]} (default: {_at(default.best)})."


def _device_name(result: TuneResult) -> str:
    return str(result.measured_on.get("name") or "the measuring device")


def headline(result: TuneResult) -> dict:
    """The choice in a few sentences: configuration, load carried within the SLO, gain, and (when a
    smaller card was emulated) that the target card's speed is the planner's estimate."""
    chosen = result.trial(result.chosen) if result.chosen else None
    view = {"chosen": chosen.trial_id if chosen else None, "flags": flags_text(chosen) if chosen else "",
            "load": "", "gain": "", "gain_ratio": None, "estimate": ""}
    if chosen is None:
        view["load"] = ("No configuration was chosen: none met the SLO at any load tried." if not result.chosen
                        else f"The chosen trial {result.chosen!r} is not among the trials recorded.")
        return view
    best = chosen.best
    if best is None:
        view["load"] = f"{chosen.trial_id} met the SLO at no load tried."
        return view
    where = (f" on the {_device_name(result)} (memory capped to the {result.target_profile}'s)"
             if result.emulated else "")
    view["load"] = (f"Carries {best.concurrency} concurrent streams at {words.rate(best.output_tok_s)} output "
                    f"tok/s within the SLO{where}: {best.slo_fraction:.0%} of requests met it "
                    f"({best.slo_fraction_low:.0%}–{best.slo_fraction_high:.0%} at 95%).")
    view["gain_ratio"], view["gain"] = gain_over_default(result)
    if result.emulated:
        predicted = chosen.predicted.target_output_tok_s if chosen.predicted else None
        view["estimate"] = (f"On the {result.target_profile} itself the planner estimates "
                            f"{words.rate(predicted)} output tok/s at c={best.concurrency}: an estimate, not "
                            f"a measurement." if predicted is not None else
                            f"The planner gave no estimate of the speed on the {result.target_profile} itself.")
    return view


def _ms(value: float | None) -> str:
    return words.ms(None if value is None else value / 1000)


def _slo_words(point: LoadPoint) -> str:
    words = f"{point.slo_fraction:.0%} ({point.slo_fraction_low:.0%}–{point.slo_fraction_high:.0%})"
    # the interval straddles the target: too few requests to be sure of the verdict either way
    return words if point.resolved else words + ", unresolved"


def _planner_error(trial: Trial, emulated: bool) -> tuple[str, str]:
    """(predicted tok/s, its error against the measured best) as table cells. The error is
    (predicted - measured) / measured: positive where the planner promised more than was measured.
    The prediction is for the device that measured, also when a smaller card was emulated on it."""
    predicted = trial.predicted.output_tok_s if trial.predicted else None
    if predicted is None:
        return "–", "–"
    if trial.best is None or trial.best.output_tok_s <= 0:
        return words.rate(predicted), "–"
    error = (predicted - trial.best.output_tok_s) / trial.best.output_tok_s
    return words.rate(predicted), f"{error:+.0%} ({'over' if error > 0 else 'under' if error < 0 else 'exact'})"


# ---------------------------------------------------------------- links to files beside the page

def _link(out_dir: Path, name: str | None, what: str, notes: list[str]) -> str | None:
    """A relative, percent-encoded href to `name` under out_dir when it exists there (a folder's
    report.html when it has one). A name leading outside out_dir is not linked, and noted; the
    encoding keeps a name like "javascript:..." a relative path, never a scheme."""
    if not name:
        return None
    try:
        path = file_in_result_dir(out_dir, name, what)
    except UnsafePathError as e:
        notes.append(f"{e}: not linked.")
        return None
    if not path.exists():
        return None
    suffix = ""
    if path.is_dir():
        if (path / PAGE_FILE).is_file():
            path = path / PAGE_FILE
        else:
            suffix = "/"
    return quote(Path(os.path.relpath(path, out_dir.resolve())).as_posix()) + suffix


# ---------------------------------------------------------------- charts

def _label(trial: Trial, chosen: str | None) -> str:
    marks = (["chosen"] if trial.trial_id == chosen else []) + (["default"] if trial.is_default else [])
    return trial.trial_id + (f" ({', '.join(marks)})" if marks else "")


def _line(i: int, trial: Trial, chosen: str | None) -> dict:
    """The chosen trial drawn thick, the default dashed, the rest thin: readable with ~20 lines."""
    return dict(color=charts.color(i), width=4 if trial.trial_id == chosen else 1.6,
                dash="dash" if trial.is_default else "solid")


def _hover(trial: Trial, point: LoadPoint, chosen: str | None) -> str:
    # Data strings are entity-escaped: plotly reads its own small HTML subset in labels.
    return (f"{html.escape(_label(trial, chosen))} · c={point.concurrency}<br>{html.escape(flags_text(trial))}"
            f"<br>SLO {'met' if point.meets_slo else 'missed'}: {_slo_words(point)} of requests")


def _style(fig: go.Figure, height: int) -> go.Figure:
    # Legend on the right in one column: twenty trial names stay readable and clickable there.
    fig.update_layout(template=charts.TEMPLATE, height=height, font=charts.FONT,
                      margin=dict(l=60, r=20, t=50, b=50), hoverlabel=dict(namelength=-1),
                      legend=dict(orientation="v", x=1.02, y=1, xanchor="left", yanchor="top"))
    return fig


def _ok_trials(result: TuneResult) -> list[tuple[int, Trial]]:
    """(colour index, trial) for the trials with points; the index is the trial's place in the run,
    so a trial keeps its colour in every chart."""
    return [(i, t) for i, t in enumerate(result.trials) if t.status == "ok" and t.points]


def throughput_latency_figure(result: TuneResult) -> tuple[go.Figure | None, list[dict]]:
    """Output tok/s against TTFT p99 and TPOT p99 (one panel each) for every load point of every ok
    trial, with each panel's Pareto front, SLO limit, the chosen trial's best point starred and the
    default's ringed. Also returns the front's points, for the table under the chart."""
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.08,
                        subplot_titles=[f"Output tok/s against {label} (ms)" for _, label, _ in LATENCIES])
    trials, chosen, on_front, drawn = _ok_trials(result), result.chosen, {}, False
    for col, (field, label, limit_field) in enumerate(LATENCIES, start=1):
        rows = [(t, p) for _, t in trials for p in t.points if getattr(p, field) is not None]
        if not rows:
            continue
        drawn = True
        for i, trial in trials:
            ladder = sorted((p for p in trial.points if getattr(p, field) is not None), key=lambda p: p.concurrency)
            fig.add_trace(go.Scatter(
                x=[getattr(p, field) for p in ladder], y=[p.output_tok_s for p in ladder],
                mode="lines+markers", name=html.escape(_label(trial, chosen)), legendgroup=trial.trial_id,
                showlegend=col == 1, line=_line(i, trial, chosen), opacity=1 if trial.trial_id == chosen else 0.8,
                marker=dict(size=10 if trial.trial_id == chosen else 7,
                            symbol=["circle" if p.meets_slo else "circle-open" for p in ladder]),
                text=[_hover(trial, p, chosen) for p in ladder],
                hovertemplate="%{text}<br>" + label + " %{x:,.1f} ms<br>%{y:,.1f} output tok/s<extra></extra>"),
                row=1, col=col)
        front = sorted((rows[k] for k in pareto_front([(p.output_tok_s, getattr(p, field)) for _, p in rows])),
                       key=lambda r: getattr(r[1], field))
        for t, p in front:
            on_front.setdefault((t.trial_id, p.concurrency), (t, p, []))[2].append(label)
        # hv: right along a point's throughput, then up to the next: the edge of what was reached.
        fig.add_trace(go.Scatter(
            x=[getattr(p, field) for _, p in front], y=[p.output_tok_s for _, p in front], mode="lines+markers",
            line=dict(color="#1f2328", width=2, dash="dot", shape="hv"),
            marker=dict(size=15, symbol="circle-open", color="#1f2328", line=dict(width=2)),
            name="Pareto front", legendgroup="front", showlegend=col == 1,
            text=[_hover(t, p, chosen) for t, p in front],
            hovertemplate="on the front: %{text}<extra></extra>"), row=1, col=col)
        limit = getattr(result.slo, limit_field)
        top = max(p.output_tok_s for _, p in rows) * 1.08
        fig.add_trace(go.Scatter(
            x=[limit, limit], y=[0, top], mode="lines", line=dict(color="#cf222e", width=2, dash="dash"),
            name="SLO limit", legendgroup="slo", showlegend=col == 1,
            hovertemplate=f"SLO: {label} ≤ {limit:g} ms<extra></extra>"), row=1, col=col)
        for trial, symbol, size, name in (
                (result.trial(chosen) if chosen else None, "star", 22, "chosen"),
                (default_trial(result), "diamond-open", 20, "default")):
            if trial is None or trial.best is None or getattr(trial.best, field) is None:
                continue
            fig.add_trace(go.Scatter(
                x=[getattr(trial.best, field)], y=[trial.best.output_tok_s], mode="markers",
                marker=dict(symbol=symbol, size=size, color="#bf8700" if name == "chosen" else "#1f2328",
                            line=dict(width=2, color="#1f2328")),
                name=f"{name}: {html.escape(trial.trial_id)} at c={trial.best.concurrency}", legendgroup=name,
                showlegend=col == 1, hovertemplate=f"{name}'s best load within the SLO<extra></extra>"),
                row=1, col=col)
        fig.update_xaxes(title_text=f"{label} (ms), log", type="log", row=1, col=col)
    if not drawn:
        return None, []
    fig.update_yaxes(title_text="output tok/s", rangemode="tozero")
    front_rows = [{"trial": t.trial_id, "concurrency": p.concurrency, "tok_s": words.rate(p.output_tok_s),
                   "ttft": _ms(p.ttft_p99_ms), "tpot": _ms(p.tpot_p99_ms), "on": " and ".join(on)}
                  for t, p, on in sorted(on_front.values(), key=lambda v: -v[1].output_tok_s)]
    return _style(fig, 500), front_rows


def ladder_figure(result: TuneResult) -> go.Figure | None:
    """Output tok/s, TTFT p99 and TPOT p99 against concurrency, one line per ok trial (open markers
    where the SLO was missed), the SLO limits drawn across the latency panels."""
    trials, chosen = _ok_trials(result), result.chosen
    if not trials:
        return None
    panels = (("output_tok_s", "output tok/s", None),) + tuple(
        (field, f"{label} (ms)", limit_field) for field, label, limit_field in LATENCIES)
    fig = make_subplots(rows=1, cols=3, horizontal_spacing=0.07,
                        subplot_titles=[f"{title} against concurrency" for _, title, _ in panels])
    levels = sorted({p.concurrency for _, t in trials for p in t.points})
    for col, (field, title, limit_field) in enumerate(panels, start=1):
        for i, trial in trials:
            ladder = sorted((p for p in trial.points if getattr(p, field) is not None), key=lambda p: p.concurrency)
            fig.add_trace(go.Scatter(
                x=[p.concurrency for p in ladder], y=[getattr(p, field) for p in ladder], mode="lines+markers",
                name=html.escape(_label(trial, chosen)), legendgroup=trial.trial_id, showlegend=col == 1,
                line=_line(i, trial, chosen), opacity=1 if trial.trial_id == chosen else 0.8,
                marker=dict(size=9 if trial.trial_id == chosen else 6,
                            symbol=["circle" if p.meets_slo else "circle-open" for p in ladder]),
                text=[_hover(trial, p, chosen) for p in ladder],
                hovertemplate="%{text}<br>" + title + ": %{y:,.1f}<extra></extra>"), row=1, col=col)
        if limit_field is not None:
            limit = getattr(result.slo, limit_field)
            fig.add_trace(go.Scatter(
                x=[levels[0], levels[-1]], y=[limit, limit], mode="lines", name="SLO limit", legendgroup="slo",
                showlegend=col == 2, line=dict(color="#cf222e", width=2, dash="dash"),
                hovertemplate=f"SLO limit {limit:g} ms<extra></extra>"), row=1, col=col)
            fig.update_yaxes(type="log", row=1, col=col)
        fig.update_xaxes(title_text="concurrent streams", type="log", tickvals=levels, row=1, col=col)
    fig.update_yaxes(rangemode="tozero", row=1, col=1)
    return _style(fig, 460)


# ---------------------------------------------------------------- tables

def trial_rows(result: TuneResult, out_dir: Path, notes: list[str]) -> list[dict]:
    """One row per trial: the ok ones by goodput (highest first), then those that met the SLO
    nowhere, then the failed and skipped ones. Each with its ladder of points for the details."""
    def order(t: Trial) -> tuple:
        return (t.status != "ok", t.best is None, -(t.best.output_tok_s if t.best else 0))

    rows = []
    for trial in sorted(result.trials, key=order):
        best = trial.best
        predicted, error = _planner_error(trial, result.emulated)
        points = [{
            "concurrency": p.concurrency, "requests": p.requests, "errors": p.errors,
            "tok_s": words.rate(p.output_tok_s), "req_s": words.number(p.request_s, 2),
            "ttft_p50": _ms(p.ttft_p50_ms), "ttft_p99": _ms(p.ttft_p99_ms),
            "tpot_p50": _ms(p.tpot_p50_ms), "tpot_p99": _ms(p.tpot_p99_ms), "slo": _slo_words(p),
            "meets": p.meets_slo, "saturated": p.client_saturated,
            "gpu_mem": words.number(p.gpu_memory_used_gib), "gpu_util": words.number(p.gpu_util_pct, 0),
            "bench": _link(out_dir, p.bench_dir, f"trial {trial.trial_id} c={p.concurrency}: bench_dir", notes),
            "bench_dir": p.bench_dir,
        } for p in sorted(trial.points, key=lambda p: p.concurrency)]
        rows.append({
            "id": trial.trial_id, "chosen": trial.trial_id == result.chosen, "default": trial.is_default,
            "flags": flags_text(trial), "weights": trial.weight_format, "status": trial.status,
            "setup": f"{trial.setup_s:,.1f} s {trial.setup_kind}".strip() if trial.setup_s is not None else "–",
            "best_c": str(best.concurrency) if best else "–", "tok_s": words.rate(best.output_tok_s) if best else "–",
            "ttft_p99": _ms(best.ttft_p99_ms) if best else "–", "tpot_p99": _ms(best.tpot_p99_ms) if best else "–",
            "slo": _slo_words(best) if best else "–", "predicted": predicted, "error": error,
            "reason": trial.reason or ("met the SLO at no load tried" if trial.status == "ok" and not best else ""),
            "stop_reason": trial.stop_reason,
            "prediction_notes": list(trial.predicted.notes) if trial.predicted else [],
            "points": points,
        })
    return rows


def _engine_words(engine: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in engine.items()) or "the engine's defaults"


def _warnings(result: TuneResult) -> list[str]:
    """What makes a figure on the page something other than the server's plain capacity."""
    out = []
    if result.chosen and result.trial(result.chosen) is None:
        out.append(f"The chosen trial {result.chosen!r} is not among the trials recorded in this run.")
    for trial in result.trials:
        for p in trial.points:
            if p.client_saturated:
                out.append(f"{trial.trial_id} at c={p.concurrency}: the load generator was saturated, so these "
                           f"figures are the client's limit, not the server's.")
    if result.slo.percentile != 99:
        out.append(f"The SLO is set at p{result.slo.percentile}; the charts draw p99 latencies.")
    return out


def page_view(result: TuneResult, out_dir: Path) -> dict:
    """Everything the template shows, as plain strings, lists and chart fragments."""
    notes: list[str] = []
    w = result.workload
    tl_fig, front = throughput_latency_figure(result)
    ladder = ladder_figure(result)
    chart_list = [{"id": "tune-throughput-latency", "title": "Throughput against p99 latency",
                   "caption": "Every load point of every trial, output tok/s against TTFT p99 (left) and TPOT "
                              "p99 (right); open markers missed the SLO. The dotted step line is the Pareto "
                              "front (no other point has more tok/s at less latency), the dashed red line the "
                              "SLO limit, the star the chosen trial's best load within the SLO, the diamond "
                              "the default's.", "fig": tl_fig},
                  {"id": "tune-ladder", "title": "Each trial against concurrency",
                   "caption": "One line per trial (chosen thick, default dashed; open markers missed the SLO). "
                              "Click a legend entry to hide a trial, double-click to show it alone.",
                   "fig": ladder}]
    device = result.measured_on
    return {
        "title": f"opsctl tune: {result.model} for {result.target_profile}",
        "result": result, "headline": headline(result),
        "charts": [{**c, "html": charts.to_div(c["fig"], c["id"])} for c in chart_list if c["fig"] is not None],
        "front": front,
        "trials": trial_rows(result, out_dir, notes),
        "failed": [t for t in result.trials if t.status != "ok"],
        "pruned": [{"engine": _engine_words(p.engine), "weights": p.weight_format, "reason": p.reason}
                   for p in result.pruned],
        "slo_words": result.slo.words(),
        "workload_words": (f"{w.name}: {w.input_len} prompt tokens, {w.output_len} output tokens"
                           + (f", prompts from {w.dataset}" if w.dataset else "")
                           + (", scaled for the CPU" if w.scaled_for_cpu else "")),
        "device_name": _device_name(result), "device": device,
        "search_words": (f"{result.search.strategy}: {result.search.trials_run} trials run of a grid of "
                         f"{result.search.grid_size}; stopped because {result.search.stop_reason}"
                         if result.search else "not recorded"),
        "space": [(axis, ", ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v))
                  for axis, v in result.space.items()],
        "artifacts": [(name, what, href) for name, what in ARTIFACTS if (href := _link(out_dir, name, name, notes))],
        "warnings": _warnings(result), "render_notes": notes,
        "quality": quality_rows(result),
    }


# ---------------------------------------------------------------- the page

def quality_rows(result: TuneResult) -> list[dict]:
    """Per format that ran: its perplexity, the ratio to the stored format's, and its best speed."""
    rows = []
    for q in result.quality:
        ok = [t for t in result.trials if t.status == "ok" and t.best is not None
              and (t.engine.get("model_format"), t.engine.get("quant_policy", 0)) == (q["model_format"], q["quant_policy"])]
        best = max(ok, key=lambda t: t.best.output_tok_s, default=None)
        ratio = q.get("ratio_to_stored")
        rows.append({"words": q["words"],
                     "perplexity": f"{q['perplexity']:.4f}" if q.get("perplexity") is not None else "not measured",
                     "ratio": f"{ratio:.4f}x" if ratio else "–", "error": q.get("error") or "",
                     "best": (f"{best.best.output_tok_s:,.1f} tok/s at {best.best.concurrency} streams ({best.trial_id})"
                              if best else "no load met the SLO")})
    return rows


def render_tune_report(result: TuneResult, out_dir: Path, *, inline: bool = False) -> Path:
    """Write out_dir/report.html for `result` and return its path. plotly.js is written once to
    out_dir/plotly.min.js and loaded from there, or carried in the page with inline=True (a single
    file to mail or archive). Raises ReportError (one line) when the page cannot be written."""
    out_dir = Path(out_dir)
    page = out_dir / PAGE_FILE
    view = page_view(result, out_dir)
    text = _environment().get_template(TEMPLATE_FILE).render(
        **view, generated_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        opsctl_version=_opsctl_version(),
        plotly_src=None if inline else charts.PLOTLY_FILE,
        plotly_js=charts.plotly_js() if inline else "")
    try:
        if not inline:
            charts.write_plotly_js(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        page.write_text(text, encoding="utf-8")
    except OSError as e:
        raise ReportError(f"cannot write {page}: {e.strerror or e}") from None
    return page
