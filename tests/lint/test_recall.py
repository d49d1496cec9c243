"""Recall: patterns the linter missed on mature code (issue 11, section 2), each with the safe twin it must
leave alone."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from floatguard.lint import fix_source, lint_paths, lint_source
from floatguard.lint.resolve import sibling_files


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


def test_log_of_a_softmax_kept_as_an_attribute_of_a_tf1_model() -> None:
    src = """\
    import tensorflow as tf
    class Net:
        def __init__(self, x, w, y):
            self.y = y
            self.pred = tf.nn.softmax(tf.matmul(x, w), name="pred")
            self.twice = tf.nn.softmax(x)
            self.safe = tf.clip_by_value(tf.nn.softmax(x), 1e-10, 1.0)
        def loss(self):
            a = -tf.reduce_sum(self.y * tf.log(self.pred))
            b = -tf.reduce_sum(self.y * tf.math.log(self.twice))
            c = -tf.reduce_sum(self.y * tf.log(self.safe))
            return a, b, c
        def reset(self, x):
            self.twice = tf.nn.sigmoid(x)
    def loss_fn(y, logits):
        probs = tf.nn.softmax(logits)
        return -tf.reduce_sum(y * tf.log(probs))
    """
    assert found(src, "FG102") == [(9, "FG102"), (17, "FG102")]


def test_log_of_the_absolute_value_of_a_probability() -> None:
    src = """\
    import tensorflow as tf
    def cross_entropy(labels, probabilities):
        a = -tf.reduce_sum(labels * tf.log(tf.abs(probabilities)), axis=1)
        b = -tf.reduce_sum(labels * tf.log(tf.abs(probabilities) + 1e-6), axis=1)
        c = -tf.reduce_sum(labels * tf.log(tf.clip_by_value(tf.abs(probabilities), 1e-6, 1)), axis=1)
        return a, b, c
    """
    assert found(src, "FG111") == [(3, "FG111")]


def test_log_of_a_value_already_in_log_space() -> None:
    src = """\
    import torch
    import numpy as np
    def kl(mu, logvar, z_log_var, var, logits, log_det):
        a = torch.sum(1 + logvar - mu**2 - logvar.log(), dim=1)
        b = torch.log(z_log_var)
        c = torch.log(var)
        d = torch.log(logits)
        e = np.log(log_det)
        f = torch.exp(logvar)
        return a, b, c, d, e, f
    """
    assert found(src, "FG115") == [(4, "FG115"), (5, "FG115")]
    assert found(src, "ALL")[:2] == [(4, "FG115"), (5, "FG115")]
    assert "FG115" not in {e.code for e in lint_source(textwrap.dedent(src), select=["DEFAULT"])}  # opt-in


def test_sqrt_of_a_probability_has_an_infinite_gradient_at_zero() -> None:
    src = """\
    import torch
    import torch.nn.functional as F
    def score(logits, labels, x, var):
        a = torch.sqrt(F.softmax(logits, dim=-1))
        p = torch.sigmoid(x)
        b = p.sqrt()
        c = torch.sqrt(F.softmax(logits, dim=-1) + 1e-8)
        d = torch.sqrt(var)
        e = torch.exp(0.5 * F.log_softmax(logits, dim=-1))
        return a, b, c, d, e
    """
    assert found(src, "FG116") == [(4, "FG116"), (6, "FG116")]
    assert "FG116" not in {e.code for e in lint_source(textwrap.dedent(src), select=["DEFAULT"])}  # opt-in


# -- GRIST's remaining misses (issue 11 §2): divisions written as calls, softplus as a method chain, star imports --

def test_division_by_a_tiled_l1_norm_written_as_tf_div() -> None:
    """GRIST ID-28a/28c: ``tf.div(y, S)``, S tiles ``reduce_sum(abs(w))``, 0 when a weight column is all zero. In
    a TF 1.x graph (``tf.placeholder``) every op is differentiated, so FG201 applies outside a model class."""
    src = """\
    import tensorflow as tf
    x = tf.placeholder(tf.float32, [None, 4])
    def sc_matmul(x, w):
        s = tf.reduce_sum(tf.abs(w), axis=0)
        S = tf.reshape(tf.tile(s, [tf.shape(x)[0]]), shape=[tf.shape(x)[0], tf.shape(w)[1]])
        y = tf.matmul(x, w)
        a = tf.div(y, S, name="mydiv2")
        b = tf.math.divide(y, S)
        c = tf.truediv(y, tf.tile(s, [4]))
        d = tf.realdiv(y, S + 1e-7)
        return a, b, c, d
    """
    assert found(src, "FG201") == [(7, "FG201"), (8, "FG201"), (9, "FG201")]
    assert found(src.replace("tf.placeholder", "tf.constant"), "FG201") == []  # no graph: not differentiated


def test_divisions_written_as_torch_and_numpy_calls() -> None:
    src = """\
    import numpy as np
    import torch
    class Net(torch.nn.Module):
        def forward(self, x, w):
            a = torch.div(x, x.norm(dim=-1, keepdim=True))
            b = x.div(x.norm(dim=-1).unsqueeze(-1))
            c = torch.true_divide(x, w.abs().sum(0))
            d = np.divide(x, np.linalg.norm(x))
            e = torch.div(x, x.norm(dim=-1, keepdim=True), rounding_mode="floor")
            f = x.div(x.norm(dim=-1, keepdim=True).clamp_min(1e-12))
            return a, b, c, d, e, f
    """
    assert found(src, "FG201") == [(5, "FG201"), (6, "FG201"), (7, "FG201"), (8, "FG201")]


def test_naive_softmax_through_tf_div_and_a_tiled_sum() -> None:
    """GRIST ID-17: ``tf.div(exp, tile(reduce_sum(exp)))`` in tf_unet's pixel_wise_softmax_2."""
    src = """\
    import tensorflow as tf
    import torch
    def pixel_wise_softmax_2(output_map):
        exponential_map = tf.exp(output_map)
        sum_exp = tf.reduce_sum(exponential_map, 3, keep_dims=True)
        tensor_sum_exp = tf.tile(sum_exp, tf.stack([1, 1, 1, tf.shape(output_map)[3]]))
        return tf.div(exponential_map, tensor_sum_exp)
    def torch_softmax(x):
        e = torch.exp(x)
        return torch.div(e, e.sum(-1, keepdim=True)), e.div(e.sum(-1, keepdim=True))
    """
    assert found(src, "FG103") == [(7, "FG103"), (10, "FG103"), (10, "FG103")]


def test_naive_softplus_as_a_method_chain() -> None:
    """GRIST ID-22/51: ``wx_b.exp().add(1).log()`` in an RBM's free energy."""
    src = """\
    import torch
    def free_energy(v, W, h_bias):
        wx_b = torch.mm(v, W.t()) + h_bias
        a = wx_b.exp().add(1).log().sum(1)
        b = torch.log(torch.add(torch.exp(wx_b), 1))
        c = torch.log(torch.add(1, wx_b.exp()))
        d = torch.log(1 + wx_b.exp())
        e = wx_b.exp().add(2).log()
        f = wx_b.exp().add(1, alpha=2).log()
        return a, b, c, d, e, f
    """
    assert found(src, "FG105") == [(4, "FG105"), (5, "FG105"), (6, "FG105"), (7, "FG105")]


_VIN_MODEL = """\
import tensorflow as tf


def VI_Block(X, config):
    q = tf.layers.dense(X, config.k)
    output = tf.nn.softmax(q, name="output")
    return output


def VI_Logits(X, config):
    return tf.layers.dense(X, config.k)
"""
_VIN_TRAIN = """\
import tensorflow as tf
from {module} import *

X = tf.placeholder(tf.float32, [None, 8])
nn = VI_Block(X, config)
logits = VI_Logits(X, config)
cost = -tf.reduce_mean(tf.log(nn))
other = -tf.reduce_mean(tf.log(logits))
"""


@pytest.mark.parametrize("module", ["model", "scripts.vin.model"])
def test_log_of_a_softmax_returned_by_a_star_imported_sibling_module(tmp_path: Path, module: str) -> None:
    """GRIST ID-15: ``tf.log(nn)``, ``nn = VI_Block(...)`` from ``from model import *`` of the module next to the
    script (also spelt from the project root, ``from scripts.vin.model import *``)."""
    d = tmp_path / "scripts" / "vin"
    d.mkdir(parents=True)
    (d / "model.py").write_text(_VIN_MODEL)
    (d / "train.py").write_text(_VIN_TRAIN.format(module=module))
    res = lint_paths([d / "train.py"], select=("ALL",), use_config=False, jobs=1)
    lines = sorted({e.line or 0 for r in res for e in r.events if e.code in ("FG102", "FG111")})
    assert lines == [7]  # the log of the softmax; not the log of VI_Logits' output
    assert sibling_files(str(d / "train.py"), (d / "train.py").read_bytes()) == [d / "model.py"]


def test_a_star_import_of_a_module_elsewhere_is_not_followed(tmp_path: Path) -> None:
    d = tmp_path / "scripts" / "vin"
    d.mkdir(parents=True)
    (d / "model.py").write_text(_VIN_MODEL)
    (d / "train.py").write_text(_VIN_TRAIN.format(module="other.pkg.model"))  # not this directory
    assert sibling_files(str(d / "train.py"), (d / "train.py").read_bytes()) == []
    res = lint_paths([d / "train.py"], select=("FG102", "FG111"), use_config=False, jobs=1)
    assert [e.line for r in res for e in r.events] == []


def test_editing_a_star_imported_sibling_changes_the_cached_result(tmp_path: Path) -> None:
    """The cache key covers the star-imported sibling: once VI_Block no longer ends in a softmax, train.py's
    cached finding must go although train.py's bytes are unchanged."""
    d = tmp_path / "vin"
    d.mkdir()
    (d / "model.py").write_text(_VIN_MODEL)
    (d / "train.py").write_text(_VIN_TRAIN.format(module="model"))
    cache = tmp_path / "cache"

    def lines() -> list[int | None]:
        res = lint_paths([d / "train.py"], select=("FG102", "FG111"), use_config=False, jobs=1, cache_dir=cache)
        return [e.line for r in res for e in r.events]

    assert lines() == [7]
    assert lines() == [7]  # from the cache
    (d / "model.py").write_text(_VIN_MODEL.replace('tf.nn.softmax(q, name="output")', "tf.tanh(q)"))
    assert lines() == []
    (d / "model.py").write_text(_VIN_MODEL)
    assert lines() == [7]
