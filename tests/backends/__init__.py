# A package, so that pytest does not put tests/backends/ on sys.path: there its
# jax/ and torch/ folders would shadow (as namespace packages) a framework that
# is not installed, and Keras' `try: import jax` would find the folder.
