"""NumPy coverage: ``np.errstate(call=...)`` with the op and the source line of each finding.

NumPy sets a floating-point flag per ufunc loop; with ``errstate(..., call=f)`` it
calls ``f(kind, flag)`` from inside the ufunc, so the caller's frame is the user's
line. The op is read from the bytecode instruction that frame is executing: a
``BINARY_OP`` names its operator (``/`` → ``np.divide``), a call its callee's source
text (``np.exp``). Only the flag is known — not the array — so NumPy events carry no
stats. Underflow flags fire for every subnormal result, so they are off unless asked
for (``numpy_underflow=True``). The user's own ``np.seterr`` choices of ``"raise"``,
``"call"`` and ``"log"`` still apply after a finding is recorded: ``1/0`` under
``np.seterr(all="raise")`` raises ``FloatingPointError`` inside ``detect()`` too.
"""

from __future__ import annotations

import dis
import linecache
from types import CodeType, FrameType
from typing import Any, Literal

import numpy as np

from ..events import Event
from ._core import Session
from ._frames import user_frame
from ._hints import hint_for

__all__ = ["numpy_errstate", "numpy_op_at"]

_KIND = {"overflow": "overflow", "invalid value": "nan", "divide by zero": "div_by_zero", "underflow": "underflow"}
_BINOP = {"/": "np.divide", "//": "np.floor_divide", "*": "np.multiply", "**": "np.power", "+": "np.add",
          "-": "np.subtract", "@": "np.matmul", "%": "np.remainder"}
_CATEGORY = {"overflow": "over", "invalid value": "invalid", "divide by zero": "divide", "underflow": "under"}
_instr_cache: dict[CodeType, dict[int, dis.Instruction]] = {}


def numpy_op_at(frame: FrameType) -> str | None:
    """The NumPy op a frame is executing: ``np.divide`` for ``a / b``, ``np.exp`` for ``np.exp(x)``."""
    code = frame.f_code
    table = _instr_cache.get(code)
    if table is None:
        table = _instr_cache[code] = {i.offset: i for i in dis.get_instructions(code)}
    ins = table.get(frame.f_lasti)
    if ins is None:
        return None
    if ins.opname in ("BINARY_OP", "BINARY_TRUE_DIVIDE", "BINARY_MULTIPLY", "BINARY_POWER"):
        sym = ins.argrepr.rstrip("=") if ins.argrepr else ""
        return _BINOP.get(sym, f"operator {ins.argrepr}")
    pos = getattr(ins, "positions", None)
    if pos is None or pos.lineno is None or pos.col_offset is None:
        return None
    lines = [linecache.getline(code.co_filename, n) for n in range(pos.lineno, (pos.end_lineno or pos.lineno) + 1)]
    if not lines or not lines[0]:
        return None
    if len(lines) == 1:
        text = lines[0][pos.col_offset:pos.end_col_offset]
    else:
        text = lines[0][pos.col_offset:] + "".join(lines[1:])
    callee = text.split("(", 1)[0].strip()
    return callee or None


class numpy_errstate:
    """Route NumPy's floating-point flags to ``session`` while active (a context manager)."""

    def __init__(self, session: Session, *, underflow: bool = False) -> None:
        self.session = session
        self.underflow = underflow
        self._cm: Any = None
        self._user: dict[str, str] = {}
        self._user_call: Any = None

    def _callback(self, kind_text: str, flag: int) -> None:
        kind = _KIND.get(kind_text, kind_text)
        f = user_frame(1)
        op = numpy_op_at(f) if f is not None else None
        if kind != "underflow" or self.underflow:
            self._record(kind, kind_text, flag, f, op)
        self._as_the_user_asked(kind_text, flag, op)

    def _as_the_user_asked(self, kind_text: str, flag: int, op: str | None) -> None:
        """The user's own ``np.seterr`` choice for this flag, after the finding is recorded: theirs wins."""
        mode = self._user.get(_CATEGORY.get(kind_text, ""), "ignore")
        where = (op or "a NumPy op").removeprefix("np.")
        if mode == "raise":
            raise FloatingPointError(f"{kind_text} encountered in {where}")
        if mode == "call" and callable(self._user_call):
            self._user_call(kind_text, flag)
        elif mode in ("call", "log") and hasattr(self._user_call, "write"):
            self._user_call.write(f"Warning: {kind_text} encountered in {where}\n")

    def _record(self, kind: str, kind_text: str, flag: int, f: FrameType | None, op: str | None) -> None:
        what = {"nan": "produced NaN (invalid value)", "overflow": "overflowed to inf",
                "div_by_zero": "divided by zero", "underflow": "underflowed"}.get(kind, kind)
        ev = Event(kind=kind, source="sanitize", message=f"{op or 'a NumPy op'} {what}", severity="error",
                   hint=hint_for(kind, _np_base(op), None, phase="forward"), file=f.f_code.co_filename if f else None,
                   line=f.f_lineno if f else None, op=op, phase="forward", origin="produced",
                   stats={"numpy_flag": int(flag)})
        self.session.emit(ev, dedupe=True)

    def __enter__(self) -> numpy_errstate:
        self._user = {k: str(v) for k, v in np.geterr().items()}
        self._user_call = np.geterrcall()
        kept = ("raise", "call", "log")  # the user's own handling, applied after ours
        under: Literal["call", "ignore"] = "call" if self.underflow or self._user.get("under") in kept else "ignore"
        self._cm = np.errstate(over="call", invalid="call", divide="call", under=under, call=self._callback)
        self._cm.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._cm.__exit__(*exc)


def _np_base(op: str | None) -> str | None:
    if not op:
        return None
    name = op.rsplit(".", 1)[-1]
    return {"divide": "div", "true_divide": "div", "multiply": "mul", "power": "pow", "matmul": "mm",
            "subtract": "sub", "reciprocal": "reciprocal"}.get(name, name)
