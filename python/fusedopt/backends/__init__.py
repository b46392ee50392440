"""Per-framework executors of the step plan (fusedopt.core.plan)."""
