"""Every public op under hostile input: a result equal to SciPy's / PyTorch's, or an error naming the argument.

Hypothesis draws shapes (0-d, empty, size-1 axes), axes (None, negative, tuples), dtypes, layouts
(non-contiguous, negative strides, broadcast / expanded views, read-only arrays, Python lists and
scalars) and devices (meta); each result is compared with the peer's answer on the same values in
float64 (tolerance of the input dtype). Bad argument types (strings, None, floats for ints, sparse
tensors) must raise an error whose message names the argument. Issue 14, section 3.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import scipy.special as sp
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import floatguard as fg
import floatguard.ops as ops

SETTINGS = settings(max_examples=60, deadline=None)
TOL = {np.float16: 2e-3, np.float32: 3e-6, np.float64: 1e-11}
TORCH_DTYPE = {np.float16: torch.float16, np.float32: torch.float32, np.float64: torch.float64}
LAYOUTS = ["numpy", "negative-strides", "read-only", "strided-view", "list", "torch", "torch-transposed",
           "torch-strided"]


# -- inputs: the same values in many layouts ---------------------------------------------------------
def _present(v: np.ndarray, layout: str, dtype: Any) -> Any:
    """``v`` (float64 values already representable in ``dtype``) as ``dtype`` in ``layout``."""
    a = v.astype(dtype)
    if layout == "numpy":
        return a
    if layout == "negative-strides":
        out = np.ascontiguousarray(a[::-1])[::-1] if a.ndim else a
        assert a.ndim == 0 or a.size == 0 or a.shape[0] <= 1 or out.strides[0] < 0
        return out
    if layout == "read-only":
        a = a.copy()
        a.flags.writeable = False
        return a
    if layout == "strided-view":
        big = np.repeat(a[..., None], 2, axis=-1) if a.ndim else a
        return big[..., 0] if a.ndim else big
    if layout == "list":  # numbers in NumPy's semantics: float64, as SciPy (an empty list has no shape)
        return a.tolist() if a.size else a.astype(np.float64)
    t = torch.from_numpy(a.copy()).to(TORCH_DTYPE[dtype])  # (ascontiguousarray makes a 0-d array 1-d)
    if layout == "torch-transposed" and t.ndim >= 2:
        return t.mT.contiguous().mT  # same values, column-major
    if layout == "torch-strided" and t.ndim:
        return torch.repeat_interleave(t, 2, dim=-1)[..., ::2]
    return t


def _numpy(out: Any) -> np.ndarray:
    if isinstance(out, torch.Tensor):
        return out.detach().to(torch.float64).numpy()
    return np.asarray(out, dtype=np.float64)


def _dtype_of_result(x_in: Any, dtype: Any) -> Any:
    empty64 = isinstance(x_in, np.ndarray) and x_in.size == 0 and x_in.dtype == np.float64  # an empty "list"
    if isinstance(x_in, (list, float)) or empty64:
        return np.float64
    return dtype


def _close(got: Any, want: np.ndarray, dtype: Any, scale: float = 1.0) -> None:
    g = _numpy(got)
    assert g.shape == np.shape(want), (g.shape, np.shape(want))
    tol = TOL[dtype]
    np.testing.assert_allclose(g, want, rtol=tol, atol=tol * scale, equal_nan=True)


def _check_kind(got: Any, x_in: Any, dtype: Any) -> None:
    """Result of the input's library and dtype (lists: NumPy float64, as SciPy)."""
    if isinstance(x_in, torch.Tensor):
        assert isinstance(got, torch.Tensor) and got.dtype == x_in.dtype
    else:
        assert isinstance(got, (np.ndarray, np.generic)) and got.dtype == _dtype_of_result(x_in, dtype)


@st.composite
def _values(draw: st.DrawFn, min_dims: int = 0, lo: float = -30.0, hi: float = 30.0,
            min_side: int = 0) -> tuple[np.ndarray, Any, str]:
    dtype = draw(st.sampled_from([np.float32, np.float64, np.float16]))
    shape = draw(hnp.array_shapes(min_dims=min_dims, max_dims=3, min_side=min_side, max_side=4))
    v = draw(hnp.arrays(np.float64, shape, elements=st.floats(lo, hi)))
    v = v.astype(dtype).astype(np.float64)  # values the dtype represents exactly: one reference for all layouts
    layouts = [lay for lay in LAYOUTS if not (dtype == np.float16 and lay == "list")]
    return v, dtype, draw(st.sampled_from(layouts))


@st.composite
def _axis(draw: st.DrawFn, ndim: int, allow_tuple: bool = True) -> Any:
    if ndim == 0:
        return draw(st.sampled_from([None, 0, -1]))
    single = st.integers(-ndim, ndim - 1)
    choices = [st.none(), single]
    if allow_tuple:
        choices.append(st.lists(single, min_size=1, max_size=ndim, unique_by=lambda a: a % ndim).map(tuple))
    return draw(st.one_of(*choices))


def _axes(axis: Any, ndim: int) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    return tuple(sorted(a % max(ndim, 1) for a in (axis if isinstance(axis, tuple) else (axis,))))


# -- reductions against SciPy ------------------------------------------------------------------------
def _ref_reduction(name: str, v: np.ndarray, axis: Any, keepdims: bool) -> np.ndarray:
    w = v.reshape(1) if v.ndim == 0 else v  # a 0-d input is one entry (SciPy's atleast_1d, torch)
    axes = _axes(axis, w.ndim)
    if name in ("logsumexp", "logmeanexp"):
        if w.size:
            out = sp.logsumexp(w, axis=None if axis is None else axes, keepdims=keepdims)
        else:  # an empty sum is 0, its log -inf (SciPy 1.17 raises IndexError for shape (0, 0) and axis=None)
            out = np.sum(w, axis=axes, keepdims=keepdims) - np.inf
        if name == "logmeanexp":
            n = math.prod(w.shape[a] for a in axes)
            out = out - (math.log(n) if n else np.nan)
    elif name == "log_prod":  # np.sum: a 0-d input keeps its shape (axis 0 of it: torch.sum's one entry)
        with np.errstate(all="ignore"):
            return np.sum(np.log(v), axis=None if v.ndim == 0 else axes, keepdims=keepdims)
    elif name in ("softmax", "log_softmax"):
        out = getattr(sp, name)(w, axis=axes) if w.size else w
    else:
        raise AssertionError(name)
    out = np.asarray(out, dtype=np.float64)
    return out.reshape(v.shape if name in ("softmax", "log_softmax") else out.shape) if v.ndim == 0 else out


@SETTINGS
@given(st.data(), st.sampled_from(["logsumexp", "logmeanexp", "log_prod", "softmax", "log_softmax"]))
def test_reductions_match_scipy(data: st.DataObject, name: str) -> None:
    v, dtype, layout = data.draw(_values(lo=0.0 if name == "log_prod" else -30.0, hi=2.0 if name == "log_prod"
                                         else 30.0), label="x")
    axis = data.draw(_axis(v.ndim), label="axis")
    keepdims = data.draw(st.booleans(), label="keepdims") if name not in ("softmax", "log_softmax") else False
    x = _present(v, layout, dtype)
    kwargs: dict[str, Any] = {"axis": axis}
    if keepdims:
        kwargs["keepdims"] = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # logmeanexp of nothing warns as np.mean does
        got = getattr(fg, name)(x, **kwargs)
        want = _ref_reduction(name, v, axis, keepdims)
    _check_kind(got, x, dtype)
    if v.ndim == 0 and keepdims and isinstance(x, torch.Tensor) and name != "log_prod":
        want = want.reshape(())  # torch keeps no dimension for a 0-d input
    _close(got, want, _dtype_of_result(x, dtype), scale=max(1.0, float(np.max(np.abs(v), initial=0.0))))


@SETTINGS
@given(st.data())
def test_logcumsumexp_matches_numpy_accumulate(data: st.DataObject) -> None:
    v, dtype, layout = data.draw(_values(), label="x")
    x = _present(v, layout, dtype)
    axis = data.draw(st.integers(-max(v.ndim, 1), max(v.ndim, 1) - 1), label="axis")
    got = fg.logcumsumexp(x, axis=axis)
    want = v if v.ndim == 0 else np.logaddexp.accumulate(v, axis=axis)
    if not isinstance(x, (list, float)):
        _check_kind(got, x, dtype)
    _close(got, want, _dtype_of_result(x, dtype), scale=30.0)


# -- elementwise ops against SciPy -------------------------------------------------------------------
def _log1mexp(x: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        return np.where(x > -math.log(2), np.log(-np.expm1(x)), np.log1p(-np.exp(x)))


UNARY: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "softplus": lambda x: np.logaddexp(0.0, x),
    "log_sigmoid": sp.log_expit,
    "sigmoid": sp.expit,
    "log1mexp": _log1mexp,
    "softplus_inverse": lambda y: y + _log1mexp(-y),
    "safe_sqrt": lambda x: np.sqrt(np.maximum(x, 0.0)),
    "safe_log": lambda x: np.where(x < 0, np.nan, np.log(np.maximum(x, 1e-3))),
}
BINARY: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "logaddexp": np.logaddexp,
    "logsubexp": lambda a, b: a + _log1mexp(b - a),
    "xlogy": sp.xlogy,
    "xlog1py": sp.xlog1py,
    "safe_div": lambda a, b: a / np.where(np.abs(b) < 1e-3, np.where(b < 0, -1e-3, 1e-3), b),
}


@SETTINGS
@given(_values(lo=-20.0, hi=20.0), st.sampled_from(sorted(UNARY)))
def test_unary_ops_match_scipy(case: tuple[np.ndarray, Any, str], name: str) -> None:
    v, dtype, layout = case
    x = _present(v, layout, dtype)
    kwargs = {"eps": 1e-3} if name == "safe_log" else {}
    got = getattr(fg, name)(x, **kwargs)
    with np.errstate(all="ignore"):
        want = UNARY[name](v)
    if not isinstance(x, (list, float)):
        _check_kind(got, x, dtype)
    _close(got, want, _dtype_of_result(x, dtype), scale=20.0)


@SETTINGS
@given(st.data(), st.sampled_from(sorted(BINARY)))
def test_binary_ops_match_scipy_with_broadcasting(data: st.DataObject, name: str) -> None:
    v, dtype, layout = data.draw(_values(lo=-20.0, hi=20.0), label="a")
    # b: the shape of a, a broadcastable one (size-1 axes, fewer dims) or a Python scalar
    shape_b = data.draw(st.sampled_from([v.shape, tuple(1 for _ in v.shape), v.shape[1:], ()]), label="shape_b")
    w = data.draw(hnp.arrays(np.float64, shape_b, elements=st.floats(-20, 20)), label="b").astype(dtype)
    w = w.astype(np.float64)
    a = _present(v, layout, dtype)
    b: Any = float(w) if w.ndim == 0 and data.draw(st.booleans(), label="scalar b") else _present(w, layout, dtype)
    kwargs = {"eps": 1e-3} if name == "safe_div" else {}
    got = getattr(fg, name)(a, b, **kwargs)
    with np.errstate(all="ignore"):
        want = BINARY[name](v, w)
    _close(got, np.broadcast_to(want, np.broadcast_shapes(v.shape, w.shape)), _dtype_of_result(a, dtype),
           scale=20.0 if name != "safe_div" else 2e4)


# -- products and losses -----------------------------------------------------------------------------
@SETTINGS
@given(st.data())
def test_log_matmul_exp_matches_logsumexp_of_sums(data: st.DataObject) -> None:
    n, k, m = (data.draw(st.integers(0, 3), label=s) for s in "nkm")
    batch = data.draw(st.sampled_from([(), (1,), (2,)]), label="batch")
    dtype = data.draw(st.sampled_from([np.float32, np.float64]), label="dtype")
    layout = data.draw(st.sampled_from(LAYOUTS), label="layout")
    va = data.draw(hnp.arrays(np.float64, (*batch, n, k), elements=st.floats(-30, 30)), label="a")
    vb = data.draw(hnp.arrays(np.float64, (k, m), elements=st.floats(-30, 30)), label="b")
    va, vb = (u.astype(dtype).astype(np.float64) for u in (va, vb))
    a, b = _present(va, layout, dtype), _present(vb, layout, dtype)
    got = fg.log_matmul_exp(a, b)
    want = sp.logsumexp(va[..., :, :, None] + vb[None, :, :], axis=-2) if k else np.full((*batch, n, m), -np.inf)
    _close(got, want, _dtype_of_result(a, dtype), scale=60.0)


@SETTINGS
@given(st.data())
def test_cross_entropy_matches_torch(data: st.DataObject) -> None:
    v, dtype, layout = data.draw(_values(min_dims=2, lo=-20.0, hi=20.0, min_side=1), label="logits")
    assume(dtype != np.float16)
    axis = data.draw(st.sampled_from([1, -v.ndim + 1] if v.ndim > 1 else [1]), label="axis")
    probs = data.draw(st.booleans(), label="probabilities")
    reduction = data.draw(st.sampled_from(["mean", "sum", "none"]), label="reduction")
    eps = data.draw(st.sampled_from([0.0, 0.1, 1]), label="label_smoothing")
    n_cls = v.shape[axis]
    batch = v.shape[:1] + v.shape[2:]
    if probs:
        t = sp.softmax(data.draw(hnp.arrays(np.float64, v.shape, elements=st.floats(-3, 3)), label="t"), axis=1)
        t = t.astype(dtype).astype(np.float64)
        tt, ignore = _present(t, layout, dtype), None
    else:
        t = data.draw(hnp.arrays(np.int64, batch, elements=st.integers(0, n_cls - 1)), label="t")
        ignore = data.draw(st.sampled_from([None, 0]), label="ignore_index")
        tt = torch.from_numpy(t) if layout.startswith("torch") else t
    x = _present(v, layout, dtype)
    got = fg.cross_entropy(x, tt, axis=axis, reduction=reduction, label_smoothing=eps, ignore_index=ignore)
    want = F.cross_entropy(torch.from_numpy(v), torch.from_numpy(t), reduction=reduction, label_smoothing=float(eps),
                           ignore_index=-100 if ignore is None else ignore).numpy()
    if not isinstance(x, list):
        _check_kind(got, x, dtype)
    _close(got, want, _dtype_of_result(x, dtype), scale=20.0 * (v.size if reduction == "sum" else 1))


@SETTINGS
@given(_values(lo=-30.0, hi=30.0), st.sampled_from(["mean", "sum", "none"]), st.booleans())
def test_binary_cross_entropy_with_logits_matches_torch(case: tuple[np.ndarray, Any, str], reduction: str,
                                                        weighted: bool) -> None:
    v, dtype, layout = case
    assume(dtype != np.float16)
    t = np.asarray(sp.expit(v / 7)).astype(dtype).astype(np.float64)
    x, y = _present(v, layout, dtype), _present(t, layout, dtype)
    pw = np.full(v.shape[-1:], 2.0) if v.ndim else np.array(2.0)
    kw: dict[str, Any] = {"pos_weight": _present(pw, layout, dtype)} if weighted else {}
    got = fg.binary_cross_entropy_with_logits(x, y, reduction=reduction, **kw)
    tkw = {"pos_weight": torch.from_numpy(pw)} if weighted else {}
    want = F.binary_cross_entropy_with_logits(torch.from_numpy(v), torch.from_numpy(t), reduction=reduction,
                                              **tkw).numpy()
    _close(got, want, _dtype_of_result(x, dtype), scale=60.0 * max(1, v.size if reduction == "sum" else 1))


# -- meta tensors: a meta result of torch's shape and dtype, for every op --------------------------------
def _meta(*shape: int) -> torch.Tensor:
    return torch.empty(*shape, device="meta")


X, P, IDX = _meta(4, 3), _meta(4, 3), torch.zeros(4, dtype=torch.long, device="meta")
META: dict[str, tuple[Callable[[], Any], Callable[[], Any]]] = {
    "binary_cross_entropy_with_logits": (lambda: fg.binary_cross_entropy_with_logits(X, P),
                                         lambda: F.binary_cross_entropy_with_logits(X, P)),
    "cross_entropy": (lambda: fg.cross_entropy(X, IDX, label_smoothing=0.1),
                      lambda: F.cross_entropy(X, IDX, label_smoothing=0.1)),
    "linear_cross_entropy": (lambda: fg.linear_cross_entropy(_meta(4, 5), _meta(3, 5), IDX),
                             lambda: F.cross_entropy(_meta(4, 5) @ _meta(3, 5).T, IDX)),
    "log1mexp": (lambda: fg.log1mexp(X), lambda: torch.log(-torch.expm1(X))),
    "log_matmul_exp": (lambda: fg.log_matmul_exp(X, _meta(3, 5)), lambda: X @ _meta(3, 5)),
    "log_prod": (lambda: fg.log_prod(P, axis=1), lambda: torch.log(P).sum(1)),
    "log_sigmoid": (lambda: fg.log_sigmoid(X), lambda: F.logsigmoid(X)),
    "log_softmax": (lambda: fg.log_softmax(X), lambda: torch.log_softmax(X, -1)),
    "logaddexp": (lambda: fg.logaddexp(X, P), lambda: torch.logaddexp(X, P)),
    "logcumsumexp": (lambda: fg.logcumsumexp(X, axis=0), lambda: torch.logcumsumexp(X, 0)),
    "logmeanexp": (lambda: fg.logmeanexp(X, axis=1), lambda: torch.logsumexp(X, 1)),
    "logsubexp": (lambda: fg.logsubexp(X, P), lambda: torch.logaddexp(X, P)),
    "logsumexp": (lambda: fg.logsumexp(X, dim=-1, keepdim=True), lambda: torch.logsumexp(X, -1, keepdim=True)),
    "safe_div": (lambda: fg.safe_div(X, P), lambda: X / P),
    "safe_log": (lambda: fg.safe_log(X), lambda: torch.log(X)),
    "safe_sqrt": (lambda: fg.safe_sqrt(X), lambda: torch.sqrt(X)),
    "sigmoid": (lambda: fg.sigmoid(X), lambda: torch.sigmoid(X)),
    "softmax": (lambda: fg.softmax(X), lambda: torch.softmax(X, -1)),
    "softplus": (lambda: fg.softplus(X), lambda: F.softplus(X)),
    "softplus_inverse": (lambda: fg.softplus_inverse(X), lambda: torch.log(torch.expm1(X))),
    "xlog1py": (lambda: fg.xlog1py(X, P), lambda: torch.special.xlog1py(X, P)),
    "xlogy": (lambda: fg.xlogy(X, P), lambda: torch.special.xlogy(X, P)),
}


def test_every_public_op_is_covered() -> None:
    assert set(META) | {"default_eps"} == set(ops.__all__)
    assert set(UNARY) | set(BINARY) | {"logsumexp", "logmeanexp", "log_prod", "softmax", "log_softmax",
                                       "logcumsumexp", "log_matmul_exp", "cross_entropy", "linear_cross_entropy",
                                       "binary_cross_entropy_with_logits", "default_eps"} == set(ops.__all__)


@pytest.mark.parametrize("name", sorted(META))
def test_meta_tensors_give_a_meta_result_like_torch(name: str) -> None:
    ours, theirs = META[name]
    got, want = ours(), theirs()
    assert got.is_meta and got.shape == want.shape and got.dtype == want.dtype


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_default_eps_of_a_meta_tensor_dtype(dtype: torch.dtype) -> None:
    x = torch.empty(2, dtype=dtype, device="meta")
    fi = torch.finfo(dtype)
    assert fg.default_eps(x.dtype, "safe_log") == fi.smallest_normal
    assert fg.default_eps(x.dtype) == max(fi.eps, 2 / fi.max ** 0.5)


# -- hostile argument types: an error that names the argument ------------------------------------------
A = np.linspace(-2.0, 2.0, 6).reshape(2, 3)
T = torch.from_numpy(A.copy())
TGT = np.array([0, 2])
SPARSE = torch.from_numpy(A.copy()).to_sparse()
BAD_VALUES = {"str": "0.1", "none": None, "list-of-str": ["a", "b", "c"], "dict": {}, "sparse": SPARSE,
              "ragged": [[1.0, 2.0], [3.0]]}
# op name -> argument name -> call with that argument replaced by the bad value (x: numpy or torch others)
def _alone(n: str) -> Callable[[Any, Any], Any]:
    return lambda v, o: getattr(fg, n)(v)


def _first(n: str) -> Callable[[Any, Any], Any]:
    return lambda v, o: getattr(fg, n)(v, o)


def _second(n: str) -> Callable[[Any, Any], Any]:
    return lambda v, o: getattr(fg, n)(o, v)


ARRAY_ARGS: dict[str, dict[str, Callable[[Any, Any], Any]]] = {
    **{n: {"x": _alone(n)} for n in ("softplus", "log_sigmoid", "sigmoid", "log1mexp", "safe_sqrt", "safe_log",
                                     "logcumsumexp", "logsumexp", "logmeanexp", "softmax", "log_softmax")},
    "softplus_inverse": {"y": _alone("softplus_inverse")},
    "log_prod": {"p": _alone("log_prod")},
    **{n: {"a": _first(n), "b": _second(n)} for n in ("logaddexp", "logsubexp", "safe_div", "log_matmul_exp")},
    **{n: {"x": _first(n), "y": _second(n)} for n in ("xlogy", "xlog1py")},
    "binary_cross_entropy_with_logits": {
        "logits": lambda v, o: fg.binary_cross_entropy_with_logits(v, o),
        "targets": lambda v, o: fg.binary_cross_entropy_with_logits(o, v),
        "weight": lambda v, o: fg.binary_cross_entropy_with_logits(o, o, weight=v),
    },
    "cross_entropy": {"logits": lambda v, o: fg.cross_entropy(v, TGT if isinstance(o, np.ndarray)
                                                              else torch.from_numpy(TGT))},
}
ARRAY_CASES = [(op, arg) for op, args in ARRAY_ARGS.items() for arg in args]


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("bad", sorted(BAD_VALUES))
@pytest.mark.parametrize("case", ARRAY_CASES, ids=[f"{op}-{arg}" for op, arg in ARRAY_CASES])
def test_a_bad_array_argument_is_named(case: tuple[str, str], bad: str, backend: str) -> None:
    op, arg = case
    other = A if backend == "numpy" else T
    value = BAD_VALUES[bad]
    if op == "log_matmul_exp" and bad == "ragged":
        value = [[1.0, 2.0, 3.0], [4.0]]
    if bad == "none" and arg == "weight":  # optional: None is no weight
        ARRAY_ARGS[op][arg](value, other)
        return
    with pytest.raises((TypeError, ValueError)) as info:
        ARRAY_ARGS[op][arg](value, other)
    assert f"'{arg}'" in str(info.value), str(info.value)


# (op, argument, call with a bad scalar option)
SCALAR_OPTIONS: list[tuple[str, Callable[[Any, Any], Any]]] = [
    ("label_smoothing", lambda x, v: fg.cross_entropy(x, _target(x), label_smoothing=v)),
    ("reduction", lambda x, v: fg.cross_entropy(x, _target(x), reduction=v)),
    ("reduction", lambda x, v: fg.binary_cross_entropy_with_logits(x, x, reduction=v)),
    ("ignore_index", lambda x, v: fg.cross_entropy(x, _target(x), ignore_index=v)),
    ("axis", lambda x, v: fg.cross_entropy(x, _target(x), axis=v)),
    ("axis", lambda x, v: fg.logsumexp(x, axis=v)),
    ("axis", lambda x, v: fg.softmax(x, axis=v)),
    ("axis", lambda x, v: fg.log_softmax(x, axis=v)),
    ("axis", lambda x, v: fg.logmeanexp(x, axis=v)),
    ("axis", lambda x, v: fg.logcumsumexp(x, axis=v)),
    ("axis", lambda x, v: fg.log_prod(x, axis=v)),
    ("keepdims", lambda x, v: fg.logsumexp(x, axis=1, keepdims=v)),
    ("keepdim", lambda x, v: fg.logsumexp(x, dim=1, keepdim=v)),
    ("keepdims", lambda x, v: fg.logmeanexp(x, axis=1, keepdims=v)),
    ("keepdims", lambda x, v: fg.log_prod(x, axis=1, keepdims=v)),
    ("return_sign", lambda x, v: fg.logsumexp(x, return_sign=v)),
    ("eps", lambda x, v: fg.safe_log(x, eps=v)),
    ("eps", lambda x, v: fg.safe_div(x, x, eps=v)),
]


def _target(x: Any) -> Any:
    return torch.from_numpy(TGT) if isinstance(x, torch.Tensor) else TGT


BAD_SCALARS = ["0.1", "1", None, 1.5, [1], "", 2j, b"x"]
# a bad value that is valid for this argument: None is the default of these, a list of axes is a tuple
VALID = {("axis", None), ("axis", "[1]"), ("ignore_index", None), ("keepdim", None), ("eps", None), ("eps", 1.5)}


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("bad", BAD_SCALARS, ids=[repr(b) for b in BAD_SCALARS])
@pytest.mark.parametrize("case", SCALAR_OPTIONS, ids=[f"{arg}-{i}" for i, (arg, _) in enumerate(SCALAR_OPTIONS)])
def test_a_bad_scalar_option_is_named(case: tuple[str, Callable[[Any, Any], Any]], bad: Any, backend: str) -> None:
    arg, call = case
    x = A if backend == "numpy" else T
    if (arg, repr(bad) if isinstance(bad, list) else bad) in VALID:
        try:  # valid here (or refused by this op, naming the argument: one axis only, say)
            call(x, bad)
        except (TypeError, ValueError) as exc:
            assert f"'{arg}'" in str(exc), str(exc)
        return
    with pytest.raises((TypeError, ValueError)) as info:
        call(x, bad)
    assert f"'{arg}'" in str(info.value), str(info.value)
    if arg == "label_smoothing" and bad == 1.5:  # a number out of range
        assert info.type is ValueError
