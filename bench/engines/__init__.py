"""Other workflow engines' workloads, run by bench/orchestrator_throughput.py in their venvs."""
