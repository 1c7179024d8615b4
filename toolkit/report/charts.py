"""The report's charts as plotly figures, and their HTML fragments for the page.

Each builder takes plain data (runs, per-request DataFrames, telemetry samples) of ONE workload
group (render.py groups runs by words.group_of, so unrelated workloads never share an axis) and
returns a figure, or None when there is nothing to draw, so the page can say so instead.
plotly.js itself is loaded once per page, inline (`plotly_js()`) or from a shared plotly.min.js
(`write_plotly_js()`); every fragment leaves it out.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import plotly.offline
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from .schema import Run

PALETTE = qualitative.Plotly + qualitative.D3
TEMPLATE = "plotly_white"
FONT = dict(family="system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif", size=12)
# Per-request CSV columns drawn as distributions, in seconds, with their panel titles.
DISTRIBUTIONS = (
    ("ttft_s", "TTFT (ms)"),
    ("tpot_s", "TPOT (ms)"),
    ("itl_mean_s", "ITL, mean per request (ms)"),
    ("e2e_s", "E2E latency (ms)"),
)
# Telemetry sample fields, with their panel titles.
TELEMETRY = (
    ("memory_used_gib", "GPU memory used (GiB)"),
    ("utilization_pct", "GPU utilisation (%)"),
    ("power_w", "GPU power (W)"),
)


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


PLOTLY_FILE = "plotly.min.js"


def plotly_js() -> str:
    """The plotly.js bundle, for a page that carries it inline (a single-file export; no CDN)."""
    return plotly.offline.get_plotlyjs()


def write_plotly_js(folder: Path) -> Path:
    """folder/plotly.min.js, written once: an identical copy already there is left alone (pages
    written later share it), a different one (another plotly version) is replaced. Written to a
    temporary name and renamed, so a page never loads half a file."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / PLOTLY_FILE
    data = plotly_js().encode("utf-8")
    try:
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return path
    except OSError:
        pass
    tmp = path.with_name(f".{PLOTLY_FILE}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def to_div(fig: go.Figure, div_id: str) -> str:
    """One figure as a <div> plus the script that draws it; plotly.js must already be on the page."""
    height = fig.layout.height or 420
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, default_width="100%",
                       default_height=f"{height}px",
                       config={"displaylogo": False, "responsive": True,
                               "toImageButtonOptions": {"filename": div_id}})


def _style(fig: go.Figure, height: int) -> go.Figure:
    fig.update_layout(template=TEMPLATE, height=height, font=FONT, margin=dict(l=60, r=20, t=50, b=50),
                      legend=dict(orientation="h", yanchor="bottom", y=1.06, xanchor="left", x=0),
                      hoverlabel=dict(namelength=-1))
    return fig


def _ms(stats, field: str) -> float | None:
    value = getattr(stats, field, None) if stats is not None else None
    return None if value is None else value * 1000


def _load_key(run: Run) -> float:
    """Orders a ladder's rungs: concurrency, then request rate, then the run's position."""
    for key in ("concurrency", "request_rate", "max_concurrency", "batch_size"):
        value = run.load.get(key)
        if isinstance(value, (int, float)):
            return float(value)
    return 0.0


def throughput_latency(results: Mapping[str, Sequence[Run]]) -> go.Figure | None:
    """Output tok/s against TTFT (p50, p99) and TPOT p50: one trace per result and statistic."""
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1,
                        subplot_titles=("Output tok/s vs TTFT (ms)", "Output tok/s vs TPOT p50 (ms)"))
    drawn = False
    for i, (name, runs) in enumerate(results.items()):
        ordered = sorted(runs, key=_load_key)
        y = [r.summary.output_throughput for r in ordered]
        labels = [r.label for r in ordered]
        panels = (
            (1, "ttft", "p50", "TTFT p50", dict(symbol="circle", size=9), "solid"),
            (1, "ttft", "p99", "TTFT p99", dict(symbol="circle-open", size=10), "dot"),
            (2, "tpot", "p50", "TPOT p50", dict(symbol="diamond", size=9), "solid"),
        )
        for col, metric, field, stat, marker, dash in panels:
            x = [_ms(getattr(r.summary, metric), field) for r in ordered]
            if all(v is None for v in x):
                continue
            drawn = True
            fig.add_trace(go.Scatter(
                x=x, y=y, text=labels, mode="lines+markers" if len(ordered) > 1 else "markers",
                name=f"{name}: {stat}", legendgroup=name, marker=dict(color=color(i), **marker),
                line=dict(color=color(i), dash=dash),
                hovertemplate="%{text}<br>" + stat + " %{x:.2f} ms<br>%{y:,.1f} output tok/s<extra>" + name
                              + "</extra>"), row=1, col=col)
    if not drawn:
        return None
    fig.update_xaxes(title_text="latency (ms)", type="log", row=1, col=1)
    fig.update_xaxes(title_text="latency (ms)", type="log", row=1, col=2)
    fig.update_yaxes(title_text="output tok/s", rangemode="tozero")
    return _style(fig, 460)


def headline_bars(bars: Sequence[tuple[str, str, float, str]], figure: str, unit: str,
                  lower_is_better: bool) -> go.Figure | None:
    """The figure one workload is about, one horizontal bar per run: (label, target, value, text)
    each, coloured by target (engine, peers, HTTP), labelled with its value and its comparison in
    words ("engine 4.5x faster", "12.9x faster with caching"). Horizontal, so long run labels and
    those words stay readable."""
    bars = [b for b in bars if b[2] is not None]
    if not bars:
        return None
    fig = go.Figure()
    targets: dict[str, int] = {}
    for label, target, value, text in bars:
        first = target not in targets
        targets.setdefault(target, len(targets))
        fig.add_trace(go.Bar(
            y=[label], x=[value], orientation="h", name=target, legendgroup=target, showlegend=first,
            marker_color=color(targets[target]), text=[text], textposition="outside", cliponaxis=False,
            constraintext="none", textfont=dict(size=12),
            hovertemplate="%{y}<br>%{x:,.4~g} " + unit + "<extra>" + target + "</extra>"))
    top = max(b[2] for b in bars)
    fig.update_layout(barmode="overlay", bargap=0.35, showlegend=len(targets) > 1)
    # Room right of the longest bar for its words.
    fig.update_xaxes(title_text=f"{figure} ({unit}), {'lower' if lower_is_better else 'higher'} is better",
                     range=[0, top * 1.55 if top > 0 else 1])
    fig.update_yaxes(autorange="reversed", automargin=True)
    return _style(fig, 140 + 44 * len(bars))


def latency_distributions(samples: Mapping[str, pd.DataFrame]) -> go.Figure | None:
    """Per-request TTFT, TPOT, ITL and E2E as box plots (every point shown for small runs), in ms."""
    fig = make_subplots(rows=2, cols=2, subplot_titles=[title for _, title in DISTRIBUTIONS],
                        vertical_spacing=0.16, horizontal_spacing=0.08)
    drawn = False
    for i, (name, frame) in enumerate(samples.items()):
        ok = frame[frame["error"].isna()] if "error" in frame else frame
        shown_legend = False
        for k, (column, title) in enumerate(DISTRIBUTIONS):
            if column not in ok:
                continue
            values = pd.to_numeric(ok[column], errors="coerce").dropna() * 1000
            if values.empty:
                continue
            drawn = True
            fig.add_trace(go.Box(
                y=values, name=name, legendgroup=name, showlegend=not shown_legend, marker_color=color(i),
                boxpoints="all" if len(values) <= 40 else "outliers", jitter=0.3, pointpos=0,
                hovertemplate=f"{title}: " + "%{y:.2f}<extra>" + name + "</extra>"),
                row=k // 2 + 1, col=k % 2 + 1)
            shown_legend = True
    if not drawn:
        return None
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(type="log", title_text="ms")
    return _style(fig, 640)


def _origin(values: pd.Series) -> float:
    """Telemetry clock origin: the first sample when "t" is a wall-clock timestamp, else zero."""
    first = values.min()
    return float(first) if first > 1e8 else 0.0


def gpu_telemetry(samples: Mapping[str, Sequence[Mapping]],
                  windows: Mapping[str, Sequence[tuple[str, float, float]]] | None = None) -> go.Figure | None:
    """Memory, utilisation and power over time: one line per result and GPU.

    windows: per result, (run label, start, end) on the telemetry clock; shaded when only one
    result has telemetry (several results' clocks do not line up).
    """
    frames = {name: pd.DataFrame(list(rows)) for name, rows in samples.items() if rows}
    frames = {name: f for name, f in frames.items() if "t" in f}
    if not frames:
        return None
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=[title for _, title in TELEMETRY])
    line = 0
    for name, frame in frames.items():
        t = pd.to_numeric(frame["t"], errors="coerce")
        origin = _origin(t)
        frame = frame.assign(t=t - origin)
        if "index" not in frame:
            frame = frame.assign(index=0)
        for gpu, rows in frame.groupby("index", sort=True):
            rows = rows.sort_values("t")
            gpu_name = rows["name"].iloc[0] if "name" in rows else ""
            trace_name = f"{name}: GPU {gpu}" + (f" ({gpu_name})" if gpu_name else "")
            for k, (column, title) in enumerate(TELEMETRY):
                if column not in rows:
                    continue
                fig.add_trace(go.Scatter(
                    x=rows["t"], y=rows[column], mode="lines", name=trace_name, legendgroup=trace_name,
                    showlegend=k == 0, line=dict(color=color(line), width=2),
                    hovertemplate="t=%{x:.1f} s<br>" + title + ": %{y:.1f}<extra>" + trace_name + "</extra>"),
                    row=k + 1, col=1)
            line += 1
        if len(frames) == 1:
            for i, (label, start, end) in enumerate((windows or {}).get(name, ())):
                fig.add_vrect(x0=start - origin, x1=end - origin, fillcolor=color(i + 5), opacity=0.08,
                              line_width=0, row="all", col=1)
                fig.add_annotation(x=(start + end) / 2 - origin, y=0.04, yref="y domain", yanchor="bottom",
                                   text=label, showarrow=False, font=dict(size=12, color="#59636e"))
    fig.update_xaxes(title_text="time (s)", row=3, col=1)
    fig.update_yaxes(rangemode="tozero")
    return _style(fig, 680)
