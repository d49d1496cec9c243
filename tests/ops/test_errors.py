"""Bad inputs to the ops raise clear errors that name the offending argument."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import floatguard as fg

jax.config.update("jax_enable_x64", True)

F = np.ones(3)
M = np.ones((2, 3))

# (op name, call with the integer array ``bad`` in the argument named ``arg``, arg)
# logsumexp, softmax, log_softmax and logmeanexp promote integers as SciPy, PyTorch and JAX do
# (tests/ops/test_scipy_compat.py): they are drop-ins for those
INTEGER_ARG: list[tuple[str, Callable[[Any], Any], str]] = [
    ("logcumsumexp", lambda v: fg.logcumsumexp(v), "x"),
    ("logaddexp", lambda v: fg.logaddexp(v, F), "a"),
    ("logaddexp", lambda v: fg.logaddexp(F, v), "b"),
    ("logsubexp", lambda v: fg.logsubexp(v, F), "a"),
    ("log1mexp", lambda v: fg.log1mexp(v), "x"),
    ("softplus", lambda v: fg.softplus(v), "x"),
    ("softplus_inverse", lambda v: fg.softplus_inverse(v), "y"),
    ("sigmoid", lambda v: fg.sigmoid(v), "x"),
    ("log_sigmoid", lambda v: fg.log_sigmoid(v), "x"),
    ("xlogy", lambda v: fg.xlogy(v, F), "x"),
    ("xlogy", lambda v: fg.xlogy(F, v), "y"),
    ("xlog1py", lambda v: fg.xlog1py(F, v), "y"),
    ("binary_cross_entropy_with_logits", lambda v: fg.binary_cross_entropy_with_logits(v, F), "logits"),
    ("cross_entropy", lambda v: fg.cross_entropy(v, np.array([0, 1, 2])), "logits"),
    ("log_prod", lambda v: fg.log_prod(v), "p"),
    ("safe_log", lambda v: fg.safe_log(v), "x"),
    ("safe_sqrt", lambda v: fg.safe_sqrt(v), "x"),
    ("safe_div", lambda v: fg.safe_div(F, v), "b"),
]


@pytest.mark.parametrize(("func", "call", "arg"), INTEGER_ARG, ids=[f"{f}-{a}" for f, _, a in INTEGER_ARG])
def test_integer_input_is_refused_naming_argument_and_dtype(func: str, call: Callable[[Any], Any], arg: str) -> None:
    bad = np.arange(9).reshape(3, 3) if func == "cross_entropy" else np.arange(3)
    with pytest.raises(TypeError, match=rf"floatguard\.{func}: argument '{arg}' .*dtype int64"):
        call(bad)


def test_log_matmul_exp_integer_argument() -> None:
    with pytest.raises(TypeError, match=r"argument 'b' .*dtype int64"):
        fg.log_matmul_exp(M, np.ones((3, 2), dtype=np.int64))
    with pytest.raises(TypeError, match=r"argument 'a' .*dtype int32"):
        fg.log_matmul_exp(np.ones((2, 3), dtype=np.int32), np.ones((3, 2)))


@pytest.mark.parametrize(
    ("make", "dtype_text"),
    [
        (lambda: torch.arange(3), "torch.int64"),
        (lambda: torch.ones(3, dtype=torch.bool), "torch.bool"),
        (lambda: jnp.arange(3, dtype=jnp.int32), "int32"),
        (lambda: np.ones(3, dtype=np.complex128), "complex128"),
        (lambda: np.ones(3, dtype=bool), "bool"),
    ],
    ids=["torch-int", "torch-bool", "jax-int", "numpy-complex", "numpy-bool"],
)
def test_non_real_float_input_is_refused_on_every_backend(make: Callable[[], Any], dtype_text: str) -> None:
    # (the reductions take these as SciPy does: tests/ops/test_scipy_compat.py)
    with pytest.raises(TypeError, match=rf"argument 'x' .*dtype {re.escape(dtype_text)}"):
        fg.softplus(make())


def test_integer_error_suggests_a_cast() -> None:
    with pytest.raises(TypeError, match=r"cast it first"):
        fg.softplus(np.arange(3))


def test_non_array_object_is_refused() -> None:
    pattern = r"argument 'x' must be a NumPy array, a PyTorch tensor or a JAX array, got str"
    with pytest.raises(TypeError, match=pattern):
        fg.logsumexp("abc")


@pytest.mark.parametrize(
    ("call", "pattern"),
    [
        (lambda: fg.logaddexp(np.ones(3), torch.ones(3)), r"'a' \(numpy\) and 'b' \(torch\)"),
        (lambda: fg.logaddexp(torch.ones(3), jnp.ones(3)), r"'a' \(torch\) and 'b' \(jax\)"),
        (lambda: fg.xlogy(jnp.ones(3), np.ones(3)), r"'x' \(jax\) and 'y' \(numpy\)"),
        (lambda: fg.logsumexp(torch.ones(3), b=np.ones(3)), r"'x' \(torch\) and 'b' \(numpy\)"),
        (
            lambda: fg.logsumexp(np.ones(3), where=torch.ones(3, dtype=torch.bool)),
            r"'x' \(numpy\) and 'where' \(torch\)",
        ),
        (lambda: fg.cross_entropy(np.ones((2, 3)), torch.tensor([0, 1])), r"'logits' \(numpy\) and 'target' \(torch\)"),
        (
            lambda: fg.binary_cross_entropy_with_logits(torch.ones(3), torch.ones(3), weight=jnp.ones(3)),
            r"'logits' \(torch\) and 'weight' \(jax\)",
        ),
        (
            lambda: fg.binary_cross_entropy_with_logits(np.ones(3), np.ones(3), pos_weight=torch.ones(3)),
            r"'logits' \(numpy\) and 'pos_weight' \(torch\)",
        ),
        (lambda: fg.log_matmul_exp(np.ones((2, 2)), torch.ones(2, 2)), r"'a' \(numpy\) and 'b' \(torch\)"),
        (lambda: fg.safe_div(torch.ones(3), np.ones(3)), r"'a' \(torch\) and 'b' \(numpy\)"),
    ],
)
def test_mixed_backends_name_both_arguments(call: Callable[[], Any], pattern: str) -> None:
    with pytest.raises(TypeError, match=pattern + r" come from different array libraries"):
        call()


@pytest.mark.parametrize(
    ("call", "arg"),
    [
        (lambda: fg.logsumexp(F, b=np.ones(4)), "b"),
        (lambda: fg.logsumexp(M, axis=1, b=np.ones((3, 3))), "b"),
        (lambda: fg.logsumexp(F, where=np.ones(4, dtype=bool)), "where"),
        (lambda: fg.softmax(M, where=np.ones((2, 2), dtype=bool)), "where"),
        (lambda: fg.log_softmax(M, where=np.ones((2,), dtype=bool)), "where"),
        (lambda: fg.binary_cross_entropy_with_logits(F, np.ones(4)), "targets"),
        (lambda: fg.binary_cross_entropy_with_logits(M, np.ones(3)), "targets"),
        (lambda: fg.binary_cross_entropy_with_logits(F, F, weight=np.ones(2)), "weight"),
        (lambda: fg.binary_cross_entropy_with_logits(F, F, pos_weight=np.ones(2)), "pos_weight"),
        (lambda: fg.cross_entropy(M, np.array([0, 1, 2])), "target"),
        (lambda: fg.cross_entropy(M, np.ones((2, 4))), "target"),
        (lambda: fg.cross_entropy(M, np.ones(3)), "target"),
    ],
)
def test_shape_mismatch_names_the_argument(call: Callable[[], Any], arg: str) -> None:
    with pytest.raises(ValueError, match=rf"argument '{arg}' has shape"):
        call()


def test_elementwise_broadcast_failure_names_both_arguments() -> None:
    with pytest.raises(ValueError, match=r"'x' \(shape \(3,\)\) and 'y' \(shape \(4,\)\) do not broadcast"):
        fg.xlogy(F, np.ones(4))
    with pytest.raises(ValueError, match=r"'a' \(shape \(2, 3\)\) and 'b' \(shape \(2,\)\)"):
        fg.logaddexp(M, np.ones(2))


@pytest.mark.parametrize(
    "call",
    [
        lambda: fg.logsumexp(F, axis=1),
        lambda: fg.logsumexp(M, axis=(0, 2)),
        lambda: fg.logsumexp(M, axis=-3),
        lambda: fg.softmax(F, axis=1),
        lambda: fg.log_softmax(M, axis=2),
        lambda: fg.logcumsumexp(F, axis=1),
        lambda: fg.logmeanexp(F, axis=-2),
        lambda: fg.log_prod(F, axis=3),
        lambda: fg.cross_entropy(M, np.array([0, 1]), axis=2),
        lambda: fg.softmax(torch.ones(2, 3), axis=2),
        lambda: fg.softmax(jnp.ones((2, 3)), axis=-3),
    ],
)
def test_axis_out_of_range(call: Callable[[], Any]) -> None:
    with pytest.raises(ValueError, match=r"argument 'axis'=.* is out of range"):
        call()


def test_axis_repeated_and_non_integer() -> None:
    with pytest.raises(ValueError, match=r"argument 'axis'=\(0, 0\) repeats an axis"):
        fg.logsumexp(M, axis=(0, 0))
    with pytest.raises(ValueError, match=r"argument 'axis'.* repeats an axis"):
        fg.logsumexp(M, axis=(1, -1))
    with pytest.raises(TypeError, match=r"argument 'axis' must be an int, got 1.0"):
        fg.softmax(M, axis=1.0)


@pytest.mark.parametrize(
    ("call", "names"),
    [
        (lambda: fg.logsumexp(M, 0, dim=1), ("axis", "dim")),
        (lambda: fg.logsumexp(M, keepdims=True, keepdim=True), ("keepdims", "keepdim")),
        (lambda: fg.softmax(M, 0, dim=1), ("axis", "dim")),
        (lambda: fg.log_softmax(torch.ones(2, 3), axis=0, dim=0), ("axis", "dim")),
        (lambda: fg.logmeanexp(M, axis=(0, 1), dim=1), ("axis", "dim")),
        (lambda: fg.logcumsumexp(M, 0, dim=1), ("axis", "dim")),
        (lambda: fg.log_prod(M, axis=1, dim=1), ("axis", "dim")),
        (lambda: fg.cross_entropy(M, np.array([0, 1]), axis=0, dim=1), ("axis", "dim")),
    ],
)
def test_an_argument_and_its_pytorch_alias_together_are_refused(call: Callable[[], Any], names: tuple) -> None:
    with pytest.raises(TypeError, match=rf"pass '{names[0]}' or its alias '{names[1]}', not both"):
        call()


@pytest.mark.parametrize("reduction", ["avg", "MEAN", "", None])
def test_bad_reduction(reduction: Any) -> None:
    pattern = r"argument 'reduction' must be one of 'mean', 'sum', 'none'"
    with pytest.raises(ValueError, match=pattern):
        fg.binary_cross_entropy_with_logits(F, F, reduction=reduction)
    with pytest.raises(ValueError, match=pattern):
        fg.cross_entropy(M, np.array([0, 1]), reduction=reduction)


@pytest.mark.parametrize("eps", [-0.1, 1.5, 1.0000001, float("nan")])
def test_label_smoothing_out_of_range(eps: float) -> None:
    with pytest.raises(ValueError, match=r"argument 'label_smoothing' must be in \[0, 1\]"):
        fg.cross_entropy(M, np.array([0, 1]), label_smoothing=eps)


@pytest.mark.parametrize(
    ("target", "example"),
    [(np.array([0, 3]), "3"), (np.array([-1, 0]), "-1"), (torch.tensor([5, 0]), "5")],
    ids=["too-big", "negative", "torch"],
)
def test_class_index_out_of_range(target: Any, example: str) -> None:
    logits = torch.ones(2, 3) if isinstance(target, torch.Tensor) else M
    with pytest.raises(ValueError, match=rf"argument 'target' has class indices outside \[0, 3\) \(e\.g\. {example}\)"):
        fg.cross_entropy(logits, target)


def test_class_index_out_of_range_but_ignored_is_accepted() -> None:
    out = fg.cross_entropy(M, np.array([0, -100]), ignore_index=-100)
    assert np.isclose(out, np.log(3.0), rtol=1e-15)
    with pytest.raises(ValueError, match=r"class indices outside"):
        fg.cross_entropy(M, np.array([7, -100]), ignore_index=-100)


@pytest.mark.parametrize(
    "mask",
    [np.ones(3), np.ones(3, dtype=np.int64), torch.ones(3), jnp.ones(3, dtype=jnp.int32)],
    ids=["numpy-float", "numpy-int", "torch-float", "jax-int"],
)
@pytest.mark.parametrize("op", [fg.logsumexp, fg.softmax, fg.log_softmax])
def test_non_bool_where(mask: Any, op: Callable[..., Any]) -> None:
    x = np.ones(3)
    if isinstance(mask, torch.Tensor):
        x = torch.ones(3)
    elif isinstance(mask, jax.Array):
        x = jnp.ones(3)
    with pytest.raises(TypeError, match=r"argument 'where' must be a boolean array, got dtype"):
        op(x, where=mask)


def test_log_matmul_exp_shapes() -> None:
    with pytest.raises(ValueError, match=r"inner dimensions differ: 'a' has shape \(2, 3\) and 'b' has shape \(4, 2\)"):
        fg.log_matmul_exp(M, np.ones((4, 2)))
    with pytest.raises(ValueError, match=r"inner dimensions differ"):
        fg.log_matmul_exp(torch.ones(5, 2, 3), torch.ones(5, 2, 3))
    with pytest.raises(ValueError, match=r"'a' and 'b' must have at least 2 dimensions"):
        fg.log_matmul_exp(np.ones(3), np.ones((3, 2)))


@pytest.mark.parametrize("eps", [0, 0.0, -1e-3, float("nan")])
def test_safe_eps_must_be_positive(eps: float) -> None:
    with pytest.raises(ValueError, match=r"floatguard\.safe_log: argument 'eps' must be > 0"):
        fg.safe_log(F, eps=eps)
    with pytest.raises(ValueError, match=r"floatguard\.safe_div: argument 'eps' must be > 0"):
        fg.safe_div(F, F, eps=eps)


# -- issue 14, section 3: scalar options of the wrong type, sparse tensors, None ----------------------
T2 = torch.ones(2, 3)
T_TGT = torch.tensor([0, 1])


@pytest.mark.parametrize("value", ["0.1", None, np.array([0.1, 0.2]), True])
@pytest.mark.parametrize("logits", [M, T2], ids=["numpy", "torch"])
def test_label_smoothing_not_a_number_is_named(value: Any, logits: Any) -> None:
    # was "'<=' not supported between instances of 'float' and 'str'"
    target = T_TGT if isinstance(logits, torch.Tensor) else np.array([0, 1])
    with pytest.raises(TypeError, match=r"floatguard\.cross_entropy: argument 'label_smoothing' must be a real number"):
        fg.cross_entropy(logits, target, label_smoothing=value)


@pytest.mark.parametrize("value", ["a", 1.5, True, [0]])
@pytest.mark.parametrize("logits", [M, T2], ids=["numpy", "torch"])
def test_ignore_index_not_an_int_is_named(value: Any, logits: Any) -> None:
    # was "invalid literal for int()" on torch and a silent "ignore nothing" on NumPy
    target = T_TGT if isinstance(logits, torch.Tensor) else np.array([0, 1])
    with pytest.raises(TypeError, match=r"argument 'ignore_index' must be an int or None"):
        fg.cross_entropy(logits, target, ignore_index=value)
    assert fg.cross_entropy(logits, target, ignore_index=np.int64(1)) == fg.cross_entropy(logits, target,
                                                                                          ignore_index=1)


def test_float_axis_is_refused_on_the_cross_entropy_fast_path() -> None:
    # was accepted as axis=1 by the fused kernel's route
    with pytest.raises(TypeError, match=r"argument 'axis' must be an int, got 1.0"):
        fg.cross_entropy(T2, T_TGT, axis=1.0)
    with pytest.raises(TypeError, match=r"argument 'axis' must be an int, got 1.0"):
        fg.cross_entropy(T2, T_TGT, dim=1.0)


@pytest.mark.parametrize("eps", ["a", [1e-3], b"x", True])
def test_eps_not_a_number_is_named(eps: Any) -> None:
    with pytest.raises(TypeError, match=r"floatguard\.safe_log: argument 'eps' must be a real number"):
        fg.safe_log(F, eps=eps)
    with pytest.raises(TypeError, match=r"floatguard\.safe_div: argument 'eps' must be a real number"):
        fg.safe_div(F, F, eps=eps)


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: fg.logsumexp(M, axis=1, keepdims="yes"), "keepdims"),
        (lambda: fg.logsumexp(T2, dim=1, keepdim="yes"), "keepdim"),
        (lambda: fg.logsumexp(M, return_sign="no"), "return_sign"),
        (lambda: fg.logsumexp(T2, dim=1, return_sign=""), "return_sign"),
        (lambda: fg.logmeanexp(M, axis=1, keepdims=2), "keepdims"),
        (lambda: fg.log_prod(M, axis=1, keepdims=None), "keepdims"),
    ],
)
def test_flags_that_are_not_bools_are_named(call: Callable[[], Any], name: str) -> None:
    # "yes" and "no" were both taken as True
    with pytest.raises(TypeError, match=rf"argument '{name}' must be a bool"):
        call()


SPARSE_CALLS: list[tuple[Callable[[Any], Any], str]] = [
    (lambda s: fg.logsumexp(s, dim=-1), "x"),
    (lambda s: fg.softmax(s), "x"),
    (lambda s: fg.log_softmax(s, axis=0), "x"),
    (lambda s: fg.logmeanexp(s), "x"),
    (lambda s: fg.logcumsumexp(s), "x"),
    (lambda s: fg.logsumexp(T2, b=s), "b"),
    (lambda s: fg.cross_entropy(s, T_TGT), "logits"),
    (lambda s: fg.cross_entropy(T2, s), "target"),
    (lambda s: fg.binary_cross_entropy_with_logits(s, T2), "logits"),
    (lambda s: fg.binary_cross_entropy_with_logits(T2, T2, weight=s), "weight"),
    (lambda s: fg.softplus(s), "x"),
    (lambda s: fg.logaddexp(T2, s), "b"),
    (lambda s: fg.softplus_inverse(s), "y"),
    (lambda s: fg.log_matmul_exp(s, T2.mT), "a"),
    (lambda s: fg.log_prod(s), "p"),
    (lambda s: fg.safe_div(T2, s), "b"),
]


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
@pytest.mark.parametrize(
    "sparse",
    [lambda t: t.to_sparse(), lambda t: t.to_sparse_csr() if t.ndim == 2 else t.to_sparse()],
    ids=["coo", "csr"],
)
@pytest.mark.parametrize(("call", "arg"), SPARSE_CALLS, ids=[f"{i}-{a}" for i, (_, a) in enumerate(SPARSE_CALLS)])
def test_sparse_tensors_are_refused_naming_the_argument(call: Callable[[Any], Any], arg: str, sparse: Any) -> None:
    # was "unsupported memory format option Contiguous", "reshape is not implemented for sparse tensors"...
    s = sparse(T_TGT if arg == "target" else T2)
    with pytest.raises(TypeError, match=rf"argument '{arg}' is a tensor of layout torch\.sparse_\w+; .*to_dense\(\)"):
        call(s)


@pytest.mark.parametrize(
    ("call", "arg"),
    [
        (lambda: fg.softplus(None), "x"),  # was NaN: np.asarray(None, float) is nan
        (lambda: fg.logsumexp(None), "x"),
        (lambda: fg.log_matmul_exp(None, M), "a"),
        (lambda: fg.cross_entropy(None, np.array([0])), "logits"),
        (lambda: fg.softplus(["a"]), "x"),  # was "could not convert string to float"
        (lambda: fg.logsumexp([[1.0, 2.0], [3.0]]), "x"),
        (lambda: fg.logaddexp(T2, ["a", "b", "c"]), "b"),
        (lambda: fg.binary_cross_entropy_with_logits(M, [["a"] * 3] * 2), "targets"),
        (lambda: fg.softplus_inverse({}), "y"),  # was named 'x'
    ],
)
def test_none_and_unconvertible_lists_are_refused_naming_the_argument(call: Callable[[], Any], arg: str) -> None:
    with pytest.raises(TypeError, match=rf"argument '{arg}'"):
        call()


@pytest.mark.parametrize("make", [np.asarray, torch.tensor, jnp.asarray], ids=["numpy", "torch", "jax"])
def test_cross_entropy_of_0d_logits_names_the_argument(make: Callable[[Any], Any]) -> None:
    """0-d logits have no class axis: a ``ValueError`` naming ``logits`` (it was an ``IndexError`` from inside the
    generic path on torch, NumPy's or JAX's ``AxisError`` from ``moveaxis`` on the others)."""
    with pytest.raises(ValueError, match=r"floatguard\.cross_entropy: argument 'logits' is 0-d"):
        fg.cross_entropy(make(1.0), make(0))
