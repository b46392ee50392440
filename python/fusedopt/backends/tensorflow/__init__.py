"""The TensorFlow executor: the fused TF ops (fusedopt._ops) run a step plan."""
