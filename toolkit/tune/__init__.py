"""`opsctl tune`: find the serving settings that carry the most traffic within a latency goal.

schema.py (what a tune records, on disk after every trial), workloads.py (workload presets and their
SLOs), space.py (the configurations worth trying, pruned by the planner, and their predictions),
load_search.py (the highest load within the SLO, GuideLLM's goodput search), trial.py (one
configuration's server under load), search.py (which configurations to try), runner.py (a whole
tune, resume included), launch.py (launch.sh, lmdeploy/vllm equivalents, Kubernetes manifests),
report.py (the HTML page).
"""
