"""`opsctl tune`: find the serving settings that carry the most traffic within a latency goal.

schema.py (what a tune records, on disk after every trial), workloads.py (workload presets and their
SLOs), space.py (the configurations worth trying, pruned by the planner, and their predictions),
load_search.py (the highest load within the SLO, GuideLLM's goodput search), trial.py (one
configuration's server under load), search.py (which configurations to try), runner.py (a whole
tune, resume included), live_server.py (one server, reconfigured between trials), launch.py
(launch.sh, Kubernetes manifests), equivalents.py (the lmdeploy and vllm lines), report.py (the
HTML page).
"""
