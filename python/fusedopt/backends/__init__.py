"""Backend-specific layers of fusedopt (Keras backends other than TensorFlow).

Import-light: nothing here imports a framework; each subpackage imports its
own only when its modules are used.
"""
