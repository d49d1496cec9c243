"""Import first: one thread for every array library, set before they load.

OpenMP/MKL/OpenBLAS read their thread counts from the environment at load time and XLA
reads its flags when JAX starts, so these settings must precede ``import torch``/``jax``.
Values already in the environment win (``OMP_NUM_THREADS=2 python benchmarks/...``).

XLA's CPU runtime ignores those settings for its own fusions: it sizes its thread pool from the CPUs
the process may run on, and runs the YNNPACK fusions of reductions (jax.nn's and floatguard's
``logsumexp``/``softmax``) on it whatever ``--xla_cpu_multi_thread_eigen`` says (measured: process CPU
time twice the wall time on two cores). :func:`one_cpu` binds the process to one CPU; the benchmarks that
time JAX call it before JAX makes its first array.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
_XLA_ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
if "xla_cpu_multi_thread_eigen" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_XLA_ONE_THREAD}".strip()


def one_cpu() -> None:
    """Bind this process (and the children it starts) to one of its CPUs, so that XLA's CPU runtime runs on one
    thread; call it before JAX makes its first array (the thread pool is made with the backend). A no-op where
    the platform has no CPU affinity."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
