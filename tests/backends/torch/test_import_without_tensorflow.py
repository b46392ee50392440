"""On Keras' torch backend fusedopt's optimizers need no TensorFlow."""

import os
import subprocess
import sys
import textwrap


def test_optimizers_run_fused_without_tensorflow():
    script = textwrap.dedent("""
        import sys
        sys.modules["tensorflow"] = None  # makes `import tensorflow` fail
        import numpy as np
        import keras
        import torch
        import fusedopt
        from fusedopt import transformers
        v = keras.Variable(np.ones(5, "float32"), name="w")
        for opt in (fusedopt.Adam(0.1), fusedopt.AdamW(0.1, weight_decay=0.1),
                    fusedopt.SGD(0.1, momentum=0.5, nesterov=True),
                    fusedopt.SGD(0.1, skip_nonfinite=True,
                                 gradient_transformers=[transformers.clip_by_global_norm(1.0)])):
            opt.apply([torch.ones(5)], [v])
            assert opt.fused_paths == {"w": "fused"}, opt.fused_paths
            config = opt.get_config()
            assert type(opt).from_config(config).get_config() == config
        assert np.all(v.numpy() < 1)
        print("ok")
    """)
    env = dict(os.environ, KERAS_BACKEND="torch")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-5000:]
    assert out.stdout.strip().endswith("ok")
