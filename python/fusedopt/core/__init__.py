"""Framework-free parts of fusedopt: the step plan."""
