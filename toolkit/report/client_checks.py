"""Result files of the checks on the load generator and the tuner themselves, read into the report's schema.

All are committed beside the runs they judge (reports/examples/):

- the fake server's own account of a run (`opsctl bench fake-server --stats-dir`, saved from its
  /stats endpoint): what it was told to do (config: ttft_s, itl_s, output_len) and what it did
  (requests, token_events, ttft_s/itl_s/e2e_s summaries); the truth a bench run against it is
  judged by. Kind "fake_server".
- `bash ci/guidellm_compare.sh`: opsctl bench and GuideLLM run against the same servers at the same
  concurrency, {"comparisons": [{"label", "opsctl", "guidellm", "rows": [{metric, opsctl, guidellm,
  ratio}]}]}. Kind "guidellm_compare", a table per comparison.
- `bash ci/guidellm_goodput.sh`: opsctl tune's load search and GuideLLM's goodput search on the same
  server, {"repetitions": [{"guidellm", "opsctl": {"probes", "answer", "bracket"}, "agreement"}]}.
  Kind "guidellm_goodput", a summary table and a table of probes per repetition.
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
    return Converted(_script_result(data, name, "guidellm_compare", notes), tables, headline)


def _script_result(data: dict, name: str, kind: str, notes: list[str]) -> BenchResult:
    """The result of one of the ci/guidellm_*.sh comparisons: its script, versions, machine, notes."""
    versions = {k: str(v) for k, v in (data.get("versions") or {}).items()}
    return BenchResult(run_id=name, kind=kind, created_at="not recorded",
                       command=str(data.get("script", f"bash ci/{kind}.sh")),
                       git_commit=versions.get("opsctl_git_commit", "unknown"),
                       device=dict(data.get("machine") or {}), versions=versions, notes=notes)


def is_guidellm_goodput(data) -> bool:
    return (isinstance(data, dict) and isinstance(data.get("repetitions"), list) and "guidellm" in str(
        data.get("versions", {})) and "comparisons" not in data)


def _pct(value) -> str:
    value = _num(value)
    return f"{value:.1%}" if value is not None else "–"


def _n(value, digits: int = 0) -> str:
    value = _num(value)
    return f"{value:,.{digits}f}" if value is not None else "–"


def _bracket(search: dict) -> str:
    best, worst = (list(search.get("bracket") or []) + [None, None])[:2]
    return f"[{best if best is not None else '–'}, {worst if worst is not None else '–'}]"


def guidellm_goodput(data: dict, name: str) -> Converted:
    """`bash ci/guidellm_goodput.sh`: opsctl tune's load search and GuideLLM's goodput search on the
    same server, {"settings", "repetitions": [{"label", "order", "guidellm" | "guidellm_rampup" |
    "opsctl": {"probes": [{streams, requests, attainment, attainment_low/high, pass, resolved,
    ttft_p90_ms, tpot_p90_ms, sent_together, counted}], "answer", "bracket", "stop"}, "wall_s",
    "agreement", "agreement_rampup"}]}. Kind "guidellm_goodput"."""
    arms = [("guidellm", "GuideLLM", "agreement"), ("guidellm_rampup", "GuideLLM ramp-up", "agreement_rampup"),
            ("opsctl", "opsctl tune", None)]
    present = [a for a in arms if any(isinstance(r, dict) and isinstance(r.get(a[0]), dict)
                                      for r in data["repetitions"])]
    summary, tables, counts = [], [], {}
    for rep in data["repetitions"]:
        if not isinstance(rep, dict):
            continue
        label, wall = str(rep.get("label", "?")), rep.get("wall_s") or {}
        row = [label, str(rep.get("first", "–"))]
        probes = []
        for key, title, verdict_key in present:
            search = rep.get(key) if isinstance(rep.get(key), dict) else {}
            answer = search.get("answer")
            row += [str(answer) if answer is not None else "none", _bracket(search), _n(wall.get(key))]
            if verdict_key:
                verdict = rep.get(verdict_key) or {}
                row.append(("yes" if verdict.get("within_one_step") else "NO") if verdict else "–")
                if verdict:
                    done = counts.setdefault(title, [0, 0])
                    done[0] += bool(verdict.get("within_one_step"))
                    done[1] += 1
            for i, p in enumerate(search.get("probes") or []):
                if not isinstance(p, dict):
                    continue
                words = "pass" if p.get("pass") else "fail"
                if not p.get("resolved", True):
                    words += ", unresolved"
                if p.get("counted") is False:
                    words += ", then re-run"
                probes.append([title, str(i + 1), str(p.get("streams", "?")), str(p.get("requests", "–")),
                               _pct(p.get("attainment")),
                               f"{_pct(p.get('attainment_low'))} – {_pct(p.get('attainment_high'))}", words,
                               _n(p.get("ttft_p90_ms")), _n(p.get("tpot_p90_ms"), 1), _n(p.get("sent_together"), 2)])
        summary.append(row)
        tables.append(Table(f"{label}: every probe", ["search", "#", "streams", "requests", "attainment",
                                                       "95% Wilson interval", "verdict", "TTFT p90 ms",
                                                       "TPOT p90 ms", "sent together"], probes,
                            "then re-run: an unresolved opsctl probe, run again with twice the requests (the next "
                            "row decided). Sent together: the mean number of other requests sent within one decode "
                            "step of each (streams - 1: every stream in step)."))
    settings = data.get("settings") or {}
    caption = (f"SLO: TTFT <= {settings.get('ttft_ms', '?')} ms and TPOT <= {settings.get('tpot_ms', '?')} ms for "
               f"{_pct(settings.get('target_attainment'))} of requests; streams from "
               f"{settings.get('initial_streams', '?')} up to {settings.get('max_streams', '?')}, tolerance "
               f"{settings.get('tolerance', '?')}, {settings.get('requests_per_probe', '?')} requests per probe; "
               f"server flags {settings.get('engine_flags', '?')}. Bracket: [highest passing, lowest failing] "
               "streams when the search stopped; s: the search's wall time; vs opsctl: within one step of opsctl's "
               "answer.")
    columns = ["repetition", "first"]
    for key, title, verdict_key in present:
        columns += [title, "bracket", "s"] + (["vs opsctl"] if verdict_key else [])
    tables.insert(0, Table("The highest load within the SLO, per search", columns, summary, caption))
    at = [2 + sum(4 if v else 3 for _, _, v in present[:i]) for i in range(len(present))]  # answer columns
    answers = "; ".join(f"{r[0]} " + " / ".join(r[i] for i in at) for r in summary)
    agreed = ", ".join(f"{title} in {a} of {n}" for title, (a, n) in counts.items())
    flags = f" ({settings['engine_flags']})" if settings.get("engine_flags") else ""
    headline = (f"opsctl tune's load search against GuideLLM's goodput search{flags}: within one step of opsctl, "
                f"{agreed or '–'} repetitions (streams, {' / '.join(t for _, t, _ in present)}: {answers})")
    notes = [str(x) for x in data.get("findings") or []] + [str(x) for x in data.get("differences") or []]
    return Converted(_script_result(data, name, "guidellm_goodput", notes), tables, headline)
