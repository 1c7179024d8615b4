"""`opsctl tune`: find the serving settings that carry the most traffic within a latency goal.

schema.py (what a tune records), workloads.py (workload presets and their SLOs), space.py (the
configurations worth trying, pruned by the planner), trial.py (one configuration under load),
search.py (which configurations to try, and at which loads), store.py (trials on disk, resume),
launch.py (launch.sh, lmdeploy/vllm equivalents, Kubernetes manifests), report.py (the HTML page).
"""
