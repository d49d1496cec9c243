"""Rules: documentation that is executable, import aliases, value flow, and the shape of each rule."""

from __future__ import annotations

import inspect
import re
import textwrap

import pytest

from floatguard.lint import all_rules, fix_source, lint_source
from floatguard.lint.rule import Rule

PRELUDE = """\
import math
import numpy as np
import scipy.special
import torch
import torch.nn as nn
import torch.nn.functional as F
import jax
import jax.numpy as jnp
import tensorflow as tf
from tensorflow import keras
from tensorflow.keras import layers
import floatguard


def loss_fn(x, y, z, p, t, a, b, logits, scores, mask, target, logvar, log_cdf, step_probs, rate, margin, T, n):
"""


def block(doc: str, title: str) -> str:
    """The code of the fenced block under ``## Example`` or ``## Use instead``, without its import lines."""
    m = re.search(rf"^## {re.escape(title)}\n```python\n(.*?)^```$", doc, re.MULTILINE | re.DOTALL)
    assert m is not None, f"no {title} block"
    lines = m.group(1).splitlines(keepends=True)
    while lines and (lines[0].startswith(("import ", "from ")) or not lines[0].strip()):
        lines.pop(0)
    return "".join(lines)


def in_function(code: str) -> str:
    """The example inside ``loss_fn``; an example that is itself a function stays at module level."""
    if code.startswith(("def ", "@", "class ")):
        return PRELUDE.split("\n\n\ndef loss_fn")[0] + "\n\n\n" + code
    return PRELUDE + textwrap.indent(code, "    ") + "\n    return None\n"


@pytest.mark.parametrize("rule", all_rules(), ids=lambda r: r.code)
def test_rule_shape_and_documentation(rule: type[Rule]) -> None:
    assert re.fullmatch(r"FG[1-4]\d\d", rule.code) and re.fullmatch(r"[a-z0-9-]+", rule.name)
    assert rule.categories and rule.nodes
    doc = inspect.getdoc(rule) or ""
    assert "## Example" in doc and "## Use instead" in doc  # the rest of the page: test_rule_docs.py
    assert len(rule.summary()) > 40
    assert rule.__module__.rsplit(".", 1)[-1].startswith(rule.code.lower())  # one module per rule


@pytest.mark.parametrize("rule", all_rules(), ids=lambda r: r.code)
def test_documented_example_is_caught_and_use_instead_is_not(rule: type[Rule]) -> None:
    """Also with every framework (and floatguard) imported, the way the prelude imports them."""
    doc = inspect.getdoc(rule) or ""
    bad = lint_source(in_function(block(doc, "Example")), select=[rule.code])
    assert bad, f"{rule.code}: the Example is not reported"
    good = lint_source(in_function(block(doc, "Use instead")), select=[rule.code])
    assert not good, f"{rule.code}: the Use instead example is reported: {[e.message for e in good]}"


def test_codes_are_unique() -> None:
    codes = [r.code for r in all_rules()]
    assert len(codes) == len(set(codes)) and len(codes) >= 22


@pytest.mark.parametrize("src", [
    "import numpy as np\ny = np.log(np.sum(np.exp(x)))",
    "import numpy\ny = numpy.log(numpy.sum(numpy.exp(x)))",
    "from numpy import log, sum, exp\ny = log(sum(exp(x)))",
    "from numpy import *\ny = log(sum(exp(x)))",
    "import torch as th\ny = th.log(th.sum(th.exp(x), 1))",
    "import torch\ny = x.exp().sum(1).log()",
    "import jax.numpy as jnp\ny = jnp.log(jnp.sum(jnp.exp(x), axis=1))",
    "from jax import numpy as jnp\ny = jnp.log(jnp.sum(jnp.exp(x)))",
    "import tensorflow as tf\ny = tf.math.log(tf.reduce_sum(tf.exp(x), axis=1))",
    "import tensorflow as tf\ny = tf.log(tf.reduce_sum(tf.exp(x), 1))",
    "import tensorflow.compat.v1 as tf\ny = tf.log(tf.reduce_sum(tf.exp(x), 1))",
    "from tensorflow.keras import backend as K\ny = K.log(K.sum(K.exp(x), axis=1))",
    "import keras\ny = keras.ops.log(keras.ops.sum(keras.ops.exp(x), axis=1))",
    "import math\ny = math.log(sum(math.exp(v) for v in xs))",
])
def test_aliases_resolve(src: str) -> None:
    assert [e.code for e in lint_source(src)] == ["FG101"]


@pytest.mark.parametrize("src", [
    "import numpy as np\ny = np.log(z)",  # no pattern
    "import mylib as np\ny = np.log(np.sum(np.exp(x)))",  # not numpy
    "import logging\nlogging.log(1 + x, 'msg')",
    "import torch\nlog = print\ny = log(1 + x)",
    "import math\ny = math.log(1 + x, 10)",  # log with a base is not log1p's business
])
def test_unrelated_names_are_not_ops(src: str) -> None:
    assert lint_source(src) == []


def test_value_flow_through_assignments_and_views() -> None:
    src = """\
import torch
import torch.nn.functional as F


def loss(z, y, logits):
    h = torch.sigmoid(z)
    g = h
    a = torch.log(g)
    probs = F.softmax(logits, dim=-1).view(-1, 10)
    b = torch.log(probs[:, 3])
    h = torch.tanh(z)
    c = torch.log(h)
    return a, b, c
"""
    assert [(e.line, e.code) for e in lint_source(src)] == [(8, "FG117"), (10, "FG102")]


def test_value_flow_through_models_and_modules() -> None:
    src = """\
import torch
import torch.nn as nn


class Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 1)
        self.act = nn.Sigmoid()

    def forward(self, x):
        return self.act(self.fc(x))

    def nll(self, x, y):
        return -(y * torch.log(self(x)) + torch.log(self.act(x)))


def step(x, y):
    head = Head()
    p = head(x)
    return torch.log(p)
"""
    found = [(e.line, e.code) for e in lint_source(src)]
    assert (15, "FG117") in found  # log(self.act(x)) with self.act = nn.Sigmoid()
    assert (21, "FG111") in found  # the model's forward ends in a sigmoid


def test_guards_silence_log_of_probability() -> None:
    template = "import torch\n\n\ndef bce_loss(p, y):\n{body}    return -(y * torch.log({arg})).mean()\n"
    assert [e.code for e in lint_source(template.format(body="", arg="p"))] == ["FG111"]
    for body, arg in [("", "p + 1e-7"), ("", "p.clamp(min=1e-7)"), ("", "torch.clamp(p, 1e-7, 1 - 1e-7)"),
                      ("    p = p.clamp(1e-6, 1)\n", "p"), ("    p.clamp_(min=1e-6)\n", "p"),
                      ("", "torch.maximum(p, torch.tensor(1e-7))"), ("", "p + eps")]:
        assert lint_source(template.format(body=body, arg=arg)) == [], (body, arg)


def test_fixes_are_idempotent_and_parse() -> None:
    src = "\n".join([
        "import numpy as np", "import torch", "import torch.nn.functional as F", "",
        "def loss_fn(x, y, z):",
        "    a = torch.log(torch.sum(torch.exp(x), dim=1, keepdim=True))",
        "    b = torch.log(torch.sigmoid(z)) + torch.log(1 - torch.sigmoid(z))",
        "    c = np.log(1 - x) + np.exp(y) - 1",
        "    d = torch.sqrt(torch.exp(z)) * x.exp().sum(-1).log()",
        "    e = torch.log(torch.prod(x, dim=-1))",
        "    return a, b, c, d, e", "",
    ])
    once, n, remaining = fix_source(src)
    assert n >= 7 and remaining == []
    twice, m, _ = fix_source(once)
    assert m == 0 and twice == once
    compile(once, "<fixed>", "exec")
