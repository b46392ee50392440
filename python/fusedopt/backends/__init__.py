"""Per-framework layers of fusedopt: the executors of the step plan
(fusedopt.core.plan) and the low-level kernel calls of each framework
(``backends.jax.ffi``).

Import-light: nothing here imports a framework; each subpackage imports its
own only when its modules are used.
"""
