"""Measuring: workloads, offline engine runs and peers, load tests over HTTP, metrics from raw samples."""
