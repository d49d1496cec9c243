"""The PyTorch sanitizer's parts, gathered under one name.

Each part lives in a module of its own job:

* :mod:`._op_table` — what each aten op's output needs checked (:class:`Policy`);
* :mod:`._tensor_stats` — the finite/non-finite tests and a finding's statistics;
* :mod:`._module_tracker` — module paths and source lines, from global module hooks;
* :mod:`._op_sanitizer` — the ``TorchDispatchMode`` that checks every op;
* :mod:`._underflow` and :mod:`._deferred` — its underflow judgments and its deferred path;
* :mod:`._step_check` — gradients, parameters and optimizer state around ``optimizer.step()``;
* :mod:`._torch_shims` — the private torch APIs all of the above rely on.
"""

from __future__ import annotations

from ._module_tracker import ModuleTracker
from ._op_sanitizer import OpSanitizer
from ._step_check import StepChecker
from ._tensor_stats import first_bad, stored_values, tensor_stats

__all__ = ["ModuleTracker", "OpSanitizer", "StepChecker", "first_bad", "stored_values", "tensor_stats"]
