"""The florist-worker benchmark: one command, four systems, the same workload (see README)."""
