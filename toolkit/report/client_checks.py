"""Result files of the two checks on the load generator itself, read into the report's schema.

Both are committed beside the runs they judge (reports/examples/):

- the fake server's own account of a run (`opsctl bench fake-server --stats-dir`, saved from its
  /stats endpoint): what it was told to do (config: ttft_s, itl_s, output_len) and what it did
  (requests, token_events, ttft_s/itl_s/e2e_s summaries); the truth a bench run against it is
  judged by. Kind "fake_server".
- `bash ci/guidellm_compare.sh`: opsctl bench and GuideLLM run against the same servers at the same
  concurrency, {"comparisons": [{"label", "opsctl", "guidellm", "rows": [{metric, opsctl, guidellm,
  ratio}]}]}. Kind "guidellm_compare", a table per comparison.
"""
from __future__ import annotations

from .foreign import Converted, Table, _num
from .schema import BenchResult


def is_fake_server_stats(data) -> bool:
    return (isinstance(data, dict) and isinstance(data.get("config"), dict) and "token_events" in data
            and "itl_s" in data["config"])


def is_guidellm_compare(data) -> bool:
    return isinstance(data, dict) and isinstance(data.get("comparisons"), list) and "guidellm" in str(
        data.get("versions", {}))


def _ms(summary, key: str) -> str:
    value = _num((summary or {}).get(key)) if isinstance(summary, dict) else None
    return f"{value * 1000:,.2f}" if value is not None else "–"


def fake_server_stats(data: dict, name: str) -> Converted:
    config = data["config"]
    ttft, itl, e2e = data.get("ttft_s") or {}, data.get("itl_s") or {}, data.get("e2e_s") or {}
    rows = [["TTFT ms", f"{config['ttft_s'] * 1000:,.2f}" if _num(config.get("ttft_s")) is not None else "–",
             _ms(ttft, "p50"), _ms(ttft, "p99"), _ms(ttft, "mean")],
            ["inter-token time ms", f"{config['itl_s'] * 1000:,.2f}", _ms(itl, "p50"), _ms(itl, "p99"), _ms(itl, "mean")],
            ["request time ms", "–", _ms(e2e, "p50"), _ms(e2e, "p99"), _ms(e2e, "mean")]]
    table = Table("What the fake server was told and what it did", ["figure", "told", "p50", "p99", "mean"], rows,
                  "Measured by the server on its own clock, per request it served: the truth a bench run "
                  "against it is judged by.")
    requests, events = int(data.get("requests") or 0), int(data.get("token_events") or 0)
    span, rate = data.get("span_s"), _num(data.get("token_events_per_s"))
    headline = f"fake server: {requests:,} requests, {events:,} token events"
    if isinstance(span, list) and len(span) == 2 and rate:  # [first, last event] on the server's clock
        headline += f" in {span[1] - span[0]:,.1f} s ({rate:,.0f} events/s)"
    info = [["output tokens per request", str(config.get("output_len", "–"))],
            ["stream mode", str(config.get("stream_mode", "–"))],
            ["latest event behind its schedule ms", _ms({"v": data.get("late_max_s")}, "v")],
            ["requests completed / disconnected", f"{data.get('completed', '–')} / {data.get('disconnected', '–')}"]]
    result = BenchResult(run_id=name, kind="fake_server", created_at="not recorded",
                         command="opsctl bench fake-server (its /stats at the end of the run)",
                         notes=["the server's side of a bench run against the fake server"])
    return Converted(result, [table, Table("Run", ["", ""], info)], headline)


def guidellm_compare(data: dict, name: str) -> Converted:
    tables, worst = [], {}
    for comp in data["comparisons"]:
        if not isinstance(comp, dict):
            continue
        rows = []
        for row in comp.get("rows") or []:
            ratio = _num(row.get("ratio"))
            rows.append([str(row.get("metric", "?")), f"{_num(row.get('opsctl')) or 0:,.2f}",
                         f"{_num(row.get('guidellm')) or 0:,.2f}",
                         f"{ratio:.3f}" if ratio is not None else "–",
                         f"{abs(ratio - 1):.1%}" if ratio is not None else "–"])
            if ratio is not None:
                metric = str(row.get("metric", "?")).split(" (")[0]
                worst[metric] = max(worst.get(metric, 0.0), abs(ratio - 1))
        tables.append(Table(f"{comp.get('label', '?')}: opsctl bench against GuideLLM",
                            ["metric", "opsctl", "GuideLLM", "opsctl / GuideLLM", "apart"], rows))
    headline = "opsctl bench against GuideLLM, worst gap per metric: " + ", ".join(
        f"{metric} {gap:.1%}" for metric, gap in worst.items()) if worst else "opsctl bench against GuideLLM"
    notes = [str(x) for x in data.get("findings") or []]
    if data.get("runs_note"):
        notes.insert(0, str(data["runs_note"]))
    versions = {k: str(v) for k, v in (data.get("versions") or {}).items()}
    result = BenchResult(run_id=name, kind="guidellm_compare", created_at="not recorded",
                         command=str(data.get("script", "bash ci/guidellm_compare.sh")),
                         git_commit=versions.get("opsctl_git_commit", "unknown"),
                         device=dict(data.get("machine") or {}), versions=versions, notes=notes)
    return Converted(result, tables, headline)
