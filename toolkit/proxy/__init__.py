"""`opsctl proxy`: one OpenAI endpoint in front of many servers, models and machines (LMDeploy's `serve proxy`).

registry (the servers, their models, live or not, outstanding requests), strategies (least
outstanding, round robin, prefix affinity), health (periodic /health: drop and re-admit), forward
(pick, retry before the first byte, stream through unbuffered), app (the FastAPI routes,
registration, keys), metrics (Prometheus), settings (flags, servers file, secrets), server (the
process), registration (a server's side: `opsctl serve --proxy-url`).
"""
