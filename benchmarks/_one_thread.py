"""Import first: one thread for every array library, set before they load.

OpenMP/MKL/OpenBLAS read their thread counts from the environment at load time and XLA
reads its flags when JAX starts, so these settings must precede ``import torch``/``jax``.
Values already in the environment win (``OMP_NUM_THREADS=2 python benchmarks/...``).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
_XLA_ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
if "xla_cpu_multi_thread_eigen" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_XLA_ONE_THREAD}".strip()
