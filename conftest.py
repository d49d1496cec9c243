"""Collection rules for the whole tree (pytest's rootdir conftest)."""

import importlib.util

# The Triton kernels of linear_cross_entropy import triton at module level (the `dev` extra installs it on
# Linux x86-64); elsewhere their module is not collected for doctests. Their tests live in
# tests/ops/test_lce_triton.py and run them in Triton's CPU interpreter.
collect_ignore = [] if importlib.util.find_spec("triton") else ["src/floatguard/ops/_lce_triton.py"]
