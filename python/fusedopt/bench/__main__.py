"""``python -m fusedopt.bench``: the same as the ``fusedopt-bench`` command."""

import sys

from fusedopt.bench.cli import main

sys.exit(main())
