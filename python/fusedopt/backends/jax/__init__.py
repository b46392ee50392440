"""fusedopt on JAX. `fusedopt.backends.jax.ffi` holds the fused kernels as
XLA FFI calls (it imports jax); this package itself imports nothing."""
