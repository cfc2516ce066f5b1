"""Benchmarks: scripts that print ratios measured in one run and write one JSON schema (``bench.schema``).

Run from the repository root as ``python -m bench.<name>``: controller_overhead, chunk_latency, train_step,
serving, cluster, combine; ``bash bench/gpu.sh`` runs the first three and combines them. See bench/README.md.
"""
