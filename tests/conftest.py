import os

# Quieter TF logs in test output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
