"""Recall: patterns the linter missed on mature code (issue 11, section 2), each with the safe twin it must
leave alone."""

from __future__ import annotations

import textwrap
from pathlib import Path

from floatguard.lint import fix_source, lint_paths, lint_source


def found(src: str, *codes: str) -> list[tuple[int, str]]:
    return [(e.line, e.code) for e in lint_source(textwrap.dedent(src), select=list(codes))  # type: ignore[misc]
            if e.line is not None and e.code is not None]


def test_one_minus_exp_is_reported_and_fixed_with_expm1() -> None:
    src = """\
    import numpy as np
    import torch
    import torch.nn.functional as F
    def f(rate, t, z, x, logits):
        a = 1 - torch.exp(-rate * t)
        b = 1.0 - np.exp(-z)
        c = 1 - (-x).exp()
        d = torch.log(1 - torch.exp(-x))
        logp = F.logsigmoid(logits)
        e = (1 - logp.exp()) ** 2
        g = 1 - np.exp(-13.436 + 101.14 * x)
        return a, b, c, d, e, g
    """
    assert found(src, "FG114") == [(5, "FG114"), (6, "FG114"), (7, "FG114")]
    new = fix_source(textwrap.dedent(src), codes=frozenset({"FG114"}))[0]
    assert "a = -torch.expm1(-rate * t)" in new and "b = -np.expm1(-z)" in new and "c = -(-x).expm1()" in new


def test_division_by_its_own_norm_outside_a_model() -> None:
    src = """\
    import jax
    import jax.numpy as jnp
    import torch
    @torch.no_grad()
    def step(params, lr):
        for p in params:
            p -= lr * p.grad / p.grad.norm()
    def embed(x, key):
        u = x / x.norm(dim=-1, keepdim=True)
        v = x / (x.norm(dim=-1, keepdim=True) + 1e-8)
        r = jax.random.normal(key, (3,))
        w = r / jnp.linalg.norm(r)
        return u, v, w
    def loss_fn(a):
        return a / a.norm(dim=-1, keepdim=True)
    """
    assert found(src, "FG201", "FG204") == [(7, "FG201"), (9, "FG204"), (15, "FG201")]


def test_fully_masked_softmax_through_a_method_chain() -> None:
    src = """\
    import torch
    import torch.nn.functional as F
    def forward(scores, mask, v):
        scores = scores.float().masked_fill_(mask, float("-inf")).type_as(scores)
        attn = F.softmax(scores, dim=-1)
        b = F.softmax(v.masked_fill(mask, float("-inf")).float(), dim=-1)
        return attn, b
    """
    assert found(src, "FG402") == [(4, "FG402"), (6, "FG402")]


def test_log_of_a_clamped_sigmoid_has_no_gradient_where_it_saturates() -> None:
    src = """\
    import numpy as np
    import torch
    import scipy.special
    def loss_fn(x, y):
        xs_pos = torch.sigmoid(x)
        a = y * torch.log(xs_pos.clamp(min=1e-8))
        b = torch.log(torch.clamp(torch.sigmoid(x), 1e-7, 1 - 1e-7))
        c = torch.log(torch.clamp(y, 1e-7, 1.0))
        d = np.log(np.clip(scipy.special.expit(x), 1e-7, 1 - 1e-7))
        return a, b, c, d
    """
    assert found(src, "FG104", "FG111") == [(6, "FG104"), (7, "FG104")]


def test_a_helper_of_the_module_is_the_op_it_wraps() -> None:
    src = """\
    import torch
    def _exp(x):
        \"\"\"e to the x.\"\"\"
        return torch.exp(x)
    def masked_softmax(x, dim=-1):
        return torch.softmax(x, dim=dim)
    def scaled_exp(x, s):
        return s * torch.exp(x)
    def loss_fn(z, mask):
        a = torch.log(torch.sum(_exp(z), dim=-1))
        s = z.masked_fill(mask, float("-inf"))
        p = masked_softmax(s)
        b = torch.log(torch.sum(scaled_exp(z, 2.0), dim=-1))
        return a, torch.log(p), b
    """
    assert found(src, "FG101", "FG102", "FG402") == [(10, "FG101"), (11, "FG402"), (14, "FG102")]
    new = fix_source(textwrap.dedent(src), codes=frozenset({"FG101"}))[0]
    assert "a = torch.logsumexp(z, dim=-1)" in new


def test_a_gradient_over_its_own_norm_is_reported_in_optimizer_code() -> None:
    src = """\
    import torch
    @torch.no_grad()
    def step(params, lr):
        for p in params:
            grad = p.grad
            d = grad / grad.norm(dim=-1, keepdim=True)
            e = grad / (grad.norm() + 1e-8)
            f = grad / grad.norm().clamp_min(1e-12)
            h = p / p.norm()
        return d, e, f, h
    """
    assert found(src, "FG201", "FG204") == [(6, "FG201"), (9, "FG204")]


def test_a_multi_statement_helper_returning_an_op_of_its_argument_is_that_op() -> None:
    src = """\
    import torch
    def _exp(x):
        if x.dim() == 0:
            raise ValueError("x must have a dimension")
        out = torch.exp(x)
        return out
    def _shifted_exp(x):
        x = x - x.amax(dim=-1, keepdim=True)
        return torch.exp(x)
    def loss_fn(z):
        a = torch.log(torch.sum(_exp(z), dim=-1))
        b = torch.log(torch.sum(_shifted_exp(z), dim=-1))
        return a, b
    """
    assert found(src, "FG101") == [(11, "FG101")]


def test_a_softmax_wrapper_of_another_module_of_the_package(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "nn").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "nn" / "__init__.py").write_text("")
    (pkg / "utils.py").write_text(textwrap.dedent("""\
        import torch
        def masked_softmax(x, dim=-1):
            \"\"\"The project's own softmax.\"\"\"
            out = torch.softmax(x, dim=dim)
            return out
        def scaled(x, dim=-1):
            return x * 2
        """))
    (pkg / "nn" / "attention.py").write_text(textwrap.dedent("""\
        from ..utils import masked_softmax, scaled
        def forward(scores, mask):
            a = masked_softmax(scores.masked_fill(mask, float("-inf")))
            s = scores.masked_fill(mask, float("-inf"))
            b = scaled(s)
            return a, b
        """))
    res = lint_paths([pkg], select=["FG402"])
    got = [(Path(r.path).name, e.line) for r in res for e in r.events]
    assert got == [("attention.py", 3)]
