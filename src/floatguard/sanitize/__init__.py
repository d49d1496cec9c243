"""The runtime sanitizer: name the first op that overflows, underflows or makes NaN.

::

    import floatguard as fg

    with fg.detect():                  # every PyTorch op (forward and backward) and NumPy ufunc
        loss = model(x).logsumexp(-1).mean()
        loss.backward()

    step = fg.guard(train_step)        # cheap per-step check; a bad step is replayed at op level

or, without touching the code, ``floatguard run train.py --lr 3e-4``.

Each finding is an :class:`~floatguard.events.Event` — kind (``nan``, ``overflow``,
``div_by_zero``, ``underflow``, ``near_overflow``), op (``aten::exp``), phase
(``forward``, or ``backward`` with the forward op whose gradient failed), module path,
the user's file and line, dtype, shape, input/output stats, ``origin`` (``produced`` or
``propagated``) and a hint naming floatguard's stable alternative. ``report.to_json()``
gives ``{"events": [...], "first": i}``, the shape shared with the monitor and the linter.

Scope, stated plainly:

* PyTorch eager ops are checked one by one through a ``TorchDispatchMode``, forward and
  backward (``torch.utils.checkpoint``, module hooks and autocast included).
* The forward of a module made only of torch's own modules, with submodules
  (``nn.TransformerEncoder``, a ``nn.Sequential`` of ``nn.Linear``...; not a leaf alone, not
  batch norm in training, not
  ``nn.Softmax``/``nn.Sigmoid``/``nn.MultiheadAttention`` called directly) runs without the
  mode and is checked at its outputs: every op inside has the same module path and user
  line anyway. A suspect output (NaN, inf, near the max, all zeros) makes the module run
  again under the mode from the same inputs and RNG state, which names the op as an
  op-by-op run would; its backward ops are checked one by one as before (the cost, with
  and without, is measured by ``benchmarks/sanitize_overhead.py``). ``detect(exact=True)``
  (``floatguard run --exact``) checks every op as it runs, scattered underflow inside such
  modules included. A module that overwrote its own input in place cannot be replayed and
  is reported at its output.
* ``torch.compile``: compiled regions stay compiled (the numerics do not change) and are
  checked at their outputs only — a compiled module (``torch.compile(model)``) at every
  call, a compiled function when it was compiled inside ``detect()`` (always the case
  under ``floatguard run``); a non-finite value a compiled region hands to eager code is
  reported at the first eager op as propagated. Gradients made by compiled backward code
  are checked before ``optimizer.step()``. To name the op inside, run without compile.
  (torch.compile compiles under ``detect()`` exactly as without it, and dynamo never
  traces floatguard's hooks or checks: tests/sanitize/test_compile.py.)
* An op is judged element by element once its output holds a non-finite value: an inf
  where every corresponding input was finite is this op's overflow, a NaN where no input
  was NaN is this op's NaN, even beside a ``-inf`` mask the input already held.
* ``optimizer.step()`` runs unchecked op by op; the parameters and optimizer state are
  checked every 16th step (naming the parameter), and a non-finite gradient never
  reaches them under ``guard()``.
* Off the CPU the checks keep their flags on the device (one ``aminmax`` kernel per
  op) and read them once per training step, at the end of the backward (in inference:
  at the end of the forward), earlier only past 256 ops or 256 MiB of tensors kept
  for the flush: no host sync per op. The flush judges each op
  exactly as the op-by-op path does (underflow included) from the tensors kept until
  then; a tensor written in place before the flush is reported without its evidence.
  (Written for CUDA, exercised here on the CPU through ``detect(defer=True)``: every
  buggy program of the test suite names the same first op on both paths.)
* Complex outputs are judged through their real and imaginary parts; casts to float8
  through the values before the cast (``float8_e4m3fn`` saturates at ±448 without an
  inf, so a missing scale is otherwise silent): overflow, near_overflow, a tensor
  flushed to 0. Sparse gradients (``nn.Embedding(sparse=True)``) are judged at step
  level by their stored values, as are the monitor's gradient norms; ops whose output
  is sparse or nested are not judged at op level.
* Ops are checked in the thread that entered ``detect()`` (and in the autograd engine's
  threads for its backward); module paths are kept per thread, so a model run in
  another thread meanwhile does not mix into the names.
* Forked child processes (DataLoader workers, the default on Linux) inherit ``detect()``:
  a finding in a worker is shown there, raised there (DataLoader re-raises it in the
  loop as a ``RuntimeError``) and joins the parent's report when ``detect()`` ends,
  with the worker's ``pid`` in its stats. Workers started by ``spawn`` are not checked.
* NumPy: every ufunc through ``np.errstate(call=...)`` — op and line, no stats.
* JAX: use ``jax.config.update("jax_debug_nans", True)`` (re-runs the failing primitive
  un-jitted and raises at it) or ``jax.experimental.checkify`` with ``float_checks``;
  :func:`checkify_report` turns a checkify error into the same report shape.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..events import Event, Report
from ._core import ACTIONS, KINDS, LEVELS, NumericalError, NumericalWarning

if TYPE_CHECKING:
    from ._detect import detect
    from ._jax import checkify_report
    from ._step import guard

__all__ = ["ACTIONS", "KINDS", "LEVELS", "Event", "NumericalError", "NumericalWarning", "Report",
           "checkify_report", "detect", "guard"]

_LAZY = {"detect": "._detect", "guard": "._step", "checkify_report": "._jax"}


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'floatguard.sanitize' has no attribute {name!r}")
    import importlib

    if name == "guard":  # the step guard hooks into torch's optimizers
        from ..errors import require

        require("torch", feature="floatguard.guard")
    value = getattr(importlib.import_module(mod, __name__), name)
    globals()[name] = value
    return value
