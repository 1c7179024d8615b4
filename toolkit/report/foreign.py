"""Result files of the repo's other measuring scripts, read into the report's schema.

`opsctl bench` writes BenchResult files (schema.py); three scripts write their own JSON, committed
under reports/examples/ beside them:

- `python -m toolkit.bench.http_vs_offline --out F.json`: {"benchmark": "http_vs_offline", "offline",
  "http", ["http_thread", "plain_engine"], "ratio_http_over_offline", "goal", ...}; becomes a
  BenchResult of kind "http_vs_offline", one Run per system measured (the HTTP runs carry the ratio
  and the goal in their extra figures);
- `python -m engine.kernels.bench --json F.json`: {"device", "copy_gb_s", "rows": [{kernel, shape,
  ms, gb_s | tflop_s, peer, peer_ms}]}; a BenchResult of kind "kernel_bench" without runs, plus a table;
- `python -m toolkit.bench.profile_step --json F.json`: a list of {model, batch, context,
  wall_ms_per_step, tokens_per_s, gpu_kernel_ms_per_step, host_phases_ms, top_kernels_ms_per_step};
  kind "profile_step", a table per profiled batch;
- `python -m toolkit.bench.formats --out DIR`: DIR/summary.json {"device", "model", "figures":
  {workload: {format: {output_tok_s, ratio_to_bf16, ...}}}}; kind "formats", one table of every
  format against the 16-bit engine measured in the same run.

The fake server's stats, the GuideLLM comparison and the goodput-search comparison are read by
client_checks.py.
`convert(data, name)` returns None for JSON of none of these shapes, so a folder scan can pass it by.
Missing fields read as absent rather than failing: the scripts have grown fields over time.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from .schema import BenchResult, Run, RunSummary
from .words import ratio_words


@dataclass
class Table:
    """A plain table for the page: a title, column names and rows of cell text."""

    title: str
    columns: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Converted:
    result: BenchResult
    tables: list[Table] = field(default_factory=list)
    headline: str | None = None  # for kinds without runs, whose headline words.py cannot work out


def convert(data, name: str) -> Converted | None:
    """The result in `data` (parsed JSON of a file called `name`), or None when it is no known kind."""
    if isinstance(data, dict) and data.get("benchmark") == "http_vs_offline":
        return _http_vs_offline(data, name)
    if isinstance(data, dict) and isinstance(data.get("rows"), list) and "copy_gb_s" in data:
        return _kernel_bench(data, name)
    if (isinstance(data, list) and data and all(isinstance(x, dict) for x in data)
            and all("wall_ms_per_step" in x for x in data)):
        return _profile_step(data, name)
    if _is_formats_summary(data):
        return _formats_summary(data, name)
    from . import client_checks  # the load generator's own checks (imports Table and Converted from here)

    if client_checks.is_fake_server_stats(data):
        return client_checks.fake_server_stats(data, name)
    if client_checks.is_guidellm_compare(data):
        return client_checks.guidellm_compare(data, name)
    if client_checks.is_guidellm_goodput(data):
        return client_checks.guidellm_goodput(data, name)
    return None


def _num(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


# ---------------------------------------------------------------- http_vs_offline

def _http_vs_offline(data: dict, name: str) -> Converted:
    config = data.get("config") or {}
    input_len, output_len = config.get("input_len"), config.get("output_len")
    concurrency = config.get("concurrency")
    workload = {"name": "http_vs_offline", "input_len": input_len, "output_len": output_len,
                "num_requests": config.get("num_requests"), "per_token_events": config.get("per_token_events")}
    goal = _num(data.get("goal"))
    # The "http" entry is the backend the config names (process unless only the thread one ran).
    http_label = "HTTP, engine in a thread" if config.get("backend") == "thread" else "HTTP, engine in its own process"
    systems = (("offline", "offline engine (closed loop)", "engine"),
               ("plain_engine", "plain engine (all requests at once)", "engine"),
               ("http", http_label, "http"),
               ("http_thread", "HTTP, engine in a thread", "http"))
    runs, notes = [], []
    offline_tok_s = _num((data.get("offline") or {}).get("output_tok_s"))
    plain = data.get("plain_engine") if isinstance(data.get("plain_engine"), dict) else {}
    for key, label, target in systems:
        part = data.get(key)
        if not isinstance(part, dict):
            continue
        extra = {}
        for k in ("ttft_p50_s", "ttft_p99_s"):
            if _num(part.get(k)) is not None:
                extra[k.replace("_s", "_ms")] = part[k] * 1000
        for k in ("sse_events", "api_process_cpu", "client_process_cpu"):
            if part.get(k) is not None:
                extra[k] = part[k]
        engine = part.get("engine") or {}
        if engine.get("mean_step_ms") is not None:
            extra["mean_step_ms"] = engine["mean_step_ms"]
            extra["engine_steps"] = engine.get("steps")
        if target == "http":
            ratio = _num(part.get("ratio_http_over_offline"))
            if ratio is None and offline_tok_s and _num(part.get("output_tok_s")):
                ratio = part["output_tok_s"] / offline_tok_s
            plain_ratio = _num(part.get("ratio_http_over_plain"))
            whole, plain_tok_s = _num(part.get("whole_run_output_tok_s")), _num(plain.get("output_tok_s"))
            if part.get("throughput_window") == "steady" and whole and plain_tok_s:
                # The plain engine's figure spans its whole run; so must the one set against it (files
                # written before the tool did this carry the steady window's ratio: kept beside it).
                extra["ratio_steady_window_over_plain"] = part["output_tok_s"] / plain_tok_s
                ratio = plain_ratio = whole / plain_tok_s
            if ratio is not None:
                extra["ratio_http_over_offline"] = ratio
            if plain_ratio is not None:
                extra["ratio_http_over_plain"] = plain_ratio
            if goal is not None:
                extra["goal"] = goal
        if part.get("errors"):
            notes.append(f"{label}: first errors: " + "; ".join(str(e)[:200] for e in part["errors"][:3]))
        runs.append(Run(label=label, target=target, model=str(config.get("model", "?")), workload=workload,
                        load={"concurrency": concurrency, "num_requests": part.get("requests")},
                        config={k: v for k, v in config.items() if k not in workload},
                        summary=_summary(part, input_len).model_copy(update={"extra": extra})))
    device = data.get("device")
    result = BenchResult(run_id=name, kind="http_vs_offline", created_at="not recorded",
                         command=_http_vs_offline_command(config, has_thread="http_thread" in data),
                         git_commit=str(data.get("git_commit", "unknown")),
                         device={"name": device} if isinstance(device, str) else dict(device or {}),
                         versions=dict(data.get("versions") or {}), runs=runs,
                         notes=["command reconstructed from the file's config (the script does not record "
                                "its command line)"] + notes)
    for k in ("http_impl", "uvloop"):
        if k in data:
            result.versions[k] = str(data[k])
    return Converted(result)


def _summary(part: dict, input_len) -> RunSummary:
    requests = int(part.get("requests") or 0)
    errors = int(part.get("num_errors") or 0)
    seconds = _num(part.get("elapsed_s")) or 0.0
    out_tok_s = _num(part.get("output_tok_s")) or 0.0
    d = max(seconds, 1e-9)
    completed = max(requests - errors, 0)
    in_tok_s = completed * input_len / d if isinstance(input_len, int) and seconds else 0.0
    return RunSummary(num_requests=requests, num_completed=completed, num_errors=errors, duration_s=seconds,
                      request_throughput=completed / d if seconds else 0.0, input_throughput=in_tok_s,
                      output_throughput=out_tok_s, total_token_throughput=in_tok_s + out_tok_s)


def _http_vs_offline_command(config: dict, has_thread: bool) -> str:
    args = ["python", "-m", "toolkit.bench.http_vs_offline"]
    for key in ("model", "concurrency", "input_len", "output_len", "num_requests"):
        if config.get(key) is not None:
            args += [f"--{key.replace('_', '-')}", str(config[key])]
    backend = "both" if has_thread and config.get("backend") == "process" else config.get("backend")
    if backend:
        args += ["--backend", str(backend)]
    if config.get("per_token_events") is False:
        args.append("--no-per-token-events")
    if config.get("eager"):
        args.append("--eager")
    return shlex.join(args)


# ---------------------------------------------------------------- engine.kernels.bench

def _kernel_bench(data: dict, name: str) -> Converted:
    copy = _num(data.get("copy_gb_s"))
    rows = []
    best = None
    # engine.kernels.quant_bench: quantized kernels beside their bf16 peer; the headline is theirs
    quant_bench = any(isinstance(r, dict) and "speedup_vs_bf16" in r for r in data["rows"])
    for row in data["rows"]:
        if not isinstance(row, dict):
            continue
        gbs, ms_, peer_ms = _num(row.get("gb_s")), _num(row.get("ms")), _num(row.get("peer_ms"))
        if ms_ is None and _num(row.get("us")) is not None:  # engine.kernels.quant_bench: us per call, rows by M
            ms_ = row["us"] / 1000
            if _num(row.get("speedup_vs_bf16")):
                peer_ms = ms_ * row["speedup_vs_bf16"]
                row = {**row, "peer": "bf16 F.linear"}
        vs = ratio_words(ms_, peer_ms, lower_is_better=True) if ms_ and peer_ms else "–"
        shape = str(row.get("shape", "")) + (f" M={row['m']}" if _num(row.get("m")) is not None else "")
        rows.append([str(row.get("kernel", "?")), shape,
                     f"{ms_ * 1000:,.1f}" if ms_ is not None else "–",
                     f"{gbs:,.0f}" if gbs is not None else "–",
                     f"{gbs / copy:.0%}" if gbs is not None and copy else "–",
                     f"{row['tflop_s']:,.0f}" if _num(row.get("tflop_s")) is not None else "–",
                     str(row.get("peer") or "–"), f"{peer_ms * 1000:,.1f}" if peer_ms is not None else "–",
                     vs])
        is_peer = quant_bench and row.get("kernel") == "bf16"
        if gbs is not None and not is_peer and (best is None or gbs > best[1]):
            best = (f"{row.get('kernel')} {row.get('shape', '')}".strip(), gbs)
    device = data.get("device")
    result = BenchResult(run_id=name, kind="kernel_bench", created_at="not recorded",
                         command="python -m engine.kernels.bench --json " + shlex.quote(f"{name}.json"),
                         device={"name": device} if isinstance(device, str) else {},
                         versions={k: str(data[k]) for k in ("torch", "triton") if k in data},
                         notes=["command reconstructed: the script does not record its options (--sweep, --only)"])
    caption = (f"GPU time per call inside a CUDA graph, inputs cold in HBM; copy bandwidth of the card "
               f"{copy:,.0f} GB/s." if copy else "GPU time per call.")
    table = Table("Kernel timings", ["kernel", "shape", "µs", "GB/s", "of copy bandwidth", "TFLOP/s", "peer",
                                     "peer µs", "kernel against peer"], rows, caption)
    headline = f"{len(rows)} kernel timings"
    if best and copy:
        headline += f"; fastest {best[1]:,.0f} GB/s ({best[1] / copy:.0%} of the {copy:,.0f} GB/s copy bandwidth)"
    return Converted(result, [table], headline)


# ---------------------------------------------------------------- toolkit.bench.profile_step

def _profile_step(data: list[dict], name: str) -> Converted:
    first = data[0]
    rows, tables, heads = [], [], []
    for entry in data:
        wall, gpu = _num(entry.get("wall_ms_per_step")), _num(entry.get("gpu_kernel_ms_per_step"))
        tok_s = _num(entry.get("tokens_per_s"))
        prompt = entry.get("prefill_tokens") or 0  # --prefill-tokens: mixed steps, a new prompt each
        step = f"batch {entry.get('batch', '?')}" + (f" + a {prompt}-token prompt" if prompt else "")
        rows.append([_format_of(entry), str(entry.get("batch", "?")), str(prompt), str(entry.get("context", "?")),
                     str(entry.get("steps", "?")),
                     f"{wall:.3f}" if wall is not None else "–", f"{gpu:.3f}" if gpu is not None else "–",
                     f"{gpu / wall:.0%}" if gpu and wall else "–", f"{tok_s:,.1f}" if tok_s is not None else "–"])
        if wall is not None and tok_s is not None:
            heads.append(f"{_format_of(entry)}, {step}: {wall:.2f} ms per step, {tok_s:,.1f} tok/s")
        kernels = entry.get("top_kernels_ms_per_step") or {}
        phases = entry.get("host_phases_ms") or {}
        if isinstance(kernels, dict) and kernels:
            tables.append(Table(f"{step[0].upper()}{step[1:]}: GPU kernels, ms per step",
                                ["kernel", "ms per step", "of GPU time"],
                                [[_short(k), f"{v:.3f}", f"{v / gpu:.0%}" if gpu else "–"]
                                 for k, v in kernels.items() if isinstance(v, (int, float))]))
        if isinstance(phases, dict) and phases:
            tables.append(Table(f"{step[0].upper()}{step[1:]}: host phases, ms per step",
                                ["phase", "ms per step"],
                                [[str(k), f"{v:.3f}"] for k, v in phases.items() if isinstance(v, (int, float))]))
    steps = Table("Engine steps", ["weights", "batch", "new prompt tokens", "context", "steps", "wall ms per step",
                                   "GPU kernel ms per step", "GPU busy", "tok/s"], rows,
                  "Wall time per engine step against the GPU time of its kernels (profiler); the rest is host "
                  "work and gaps between kernels. With new prompt tokens every step also prefilled a new prompt "
                  "of that length (a mixed step, what an arriving request costs the running ones).")
    device = first.get("device")
    result = BenchResult(run_id=name, kind="profile_step", created_at="not recorded",
                         command=shlex.join(["python", "-m", "toolkit.bench.profile_step", str(first.get("model", "?")),
                                             "--batch", *[str(e.get("batch", "?")) for e in data],
                                             "--context", str(first.get("context", "?")),
                                             *_profile_options(first), "--json", f"{name}.json"]),
                         device={"name": device} if isinstance(device, str) else {},
                         notes=["command reconstructed from the file's entries"])
    return Converted(result, [steps, *tables], "; ".join(heads) or None)


def _format_of(entry: dict) -> str:
    """The profiled weights as the engine's flags name them: hf, int8, awq, with --w4-kernel / --w8-kernel cuda."""
    fmt = str(entry.get("model_format") or "hf")
    kernel = entry.get("w4_kernel") or entry.get("w8_kernel")
    return fmt + (f" ({kernel} kernel)" if kernel else "")


def _profile_options(entry: dict) -> list[str]:
    options = []
    for key in ("model_format", "w4_kernel", "w8_kernel", "prefill_tokens"):
        if entry.get(key) and entry.get(key) != "hf":
            options += ["--" + key.replace("_", "-"), str(entry[key])]
    return options


def _short(kernel: str, limit: int = 90) -> str:
    """A C++ template kernel name cut to something a table can hold."""
    return kernel if len(kernel) <= limit else kernel[:limit - 1] + "…"


# ---------------------------------------------------------------- toolkit.bench.formats

def _is_formats_summary(data) -> bool:
    figures = data.get("figures") if isinstance(data, dict) else None
    return (isinstance(figures, dict) and bool(figures) and "model" in data
            and all(isinstance(f, dict) and all(isinstance(r, dict) and "ratio_to_bf16" in r for r in f.values())
                    for f in figures.values()))


def _formats_summary(data: dict, name: str) -> Converted:
    rows, heads = [], []
    for workload, formats in data["figures"].items():
        ratios = []
        for fmt, r in formats.items():
            tok_s, ratio = _num(r.get("output_tok_s")), _num(r.get("ratio_to_bf16"))
            share = _num(r.get("fraction_of_bandwidth"))
            rows.append([workload, fmt, f"{tok_s:,.1f}" if tok_s is not None else "–",
                         f"{ratio:.2f}x" if ratio is not None else "–",
                         f"{r['weight_gib']:.2f}" if _num(r.get("weight_gib")) is not None else "–",
                         f"{share:.0%}" if share is not None else "–"])
            if fmt != "bf16" and ratio is not None:
                ratios.append(f"{fmt} {ratio:.2f}x")
        if ratios:
            heads.append(f"{workload}: " + ", ".join(ratios))
    device = data.get("device") if isinstance(data.get("device"), dict) else {}
    result = BenchResult(run_id=name, kind="formats", created_at="not recorded",
                         command=f"python -m toolkit.bench.formats {shlex.quote(str(data['model']))} --out DIR",
                         device=device, notes=["one engine load per format; the 16-bit engine is the peer"])
    table = Table("Weight and KV formats against the 16-bit engine", ["workload", "format", "output tok/s",
                  "of bf16", "weights GiB", "of bandwidth (decode)"], rows,
                  "Output tok/s of each format's engine in the same run; ratios to the bf16 engine's.")
    return Converted(result, [table], "; ".join(heads) + " the bf16 engine's output tok/s")
