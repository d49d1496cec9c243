"""Fixes formatted as the project formats: imports where isort/ruff put them, lines within the line length.

The judge is ruff itself (installed with the dev tools): a file that ``ruff check --select I`` and
``ruff format`` accept before ``--fix`` is accepted after it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from floatguard.lint import fix_source, lint_paths
from floatguard.lint.config import DEFAULT_LINE_LENGTH, ConfigError, Style, clear_caches, find_style
from floatguard.lint.fixes import FIRST_PARTY, LOCAL, STDLIB, THIRD_PARTY, import_section

RUFF = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
needs_ruff = pytest.mark.skipif(not Path(RUFF).exists(), reason="ruff is not installed (a dev dependency)")


def ruff(*args: str, cwd: Path, text: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([RUFF, *args], cwd=cwd, input=text, capture_output=True, text=True, timeout=60,
                          check=False)


def isort_clean(src: str, tmp: Path, first_party: str = "mypkg") -> bool:
    out = ruff("check", "--isolated", "--select", "I", "--config", f"lint.isort.known-first-party = ['{first_party}']",
               "--stdin-filename", "m.py", "-", cwd=tmp, text=src)
    assert out.returncode in (0, 1), out.stderr
    return out.returncode == 0


def isort(src: str, tmp: Path, first_party: str = "mypkg") -> str:
    out = ruff("check", "--isolated", "--select", "I", "--fix", "--exit-zero", "--config",
               f"lint.isort.known-first-party = ['{first_party}']", "--stdin-filename", "m.py", "-", cwd=tmp,
               text=src)
    assert out.returncode == 0, out.stderr
    return out.stdout


# -- imports: in their section, in order -------------------------------------------------------------------

def test_sections() -> None:
    fp = frozenset({"mypkg"})
    assert [import_section(m, fp) for m in ("math", "os.path", "numpy", "torch.nn.functional", "mypkg.util")] == \
        [STDLIB, STDLIB, THIRD_PARTY, THIRD_PARTY, FIRST_PARTY]
    assert import_section("anything", fp, level=1) == LOCAL


def test_an_added_import_goes_into_its_section_in_order() -> None:
    src = ("import os\nimport sys\n\nimport numpy as np\nimport torch\n\nfrom . import sibling\n\n\n"
           "def f(z):\n    return torch.log(1 - torch.exp(z))\n")
    new = fix_source(src, unsafe=True)[0]
    assert new.startswith("import os\nimport sys\n\nimport floatguard\nimport numpy as np\nimport torch\n\n"
                          "from . import sibling\n\n\ndef f(z):\n    return floatguard.log1mexp(z)\n")
    # in a project whose own package is floatguard: the first-party section, between third-party and local
    new = fix_source(src, unsafe=True, style=Style(first_party=frozenset({"floatguard"})))[0]
    assert new.startswith("import os\nimport sys\n\nimport numpy as np\nimport torch\n\nimport floatguard\n\n"
                          "from . import sibling\n")


def test_a_stdlib_import_starts_its_section_before_the_third_party_one() -> None:
    src = "from math import log\n\nimport numpy as np\n\n\ndef f(x):\n    return log(1 + x) + np.zeros(1)\n"
    new = fix_source(src)[0]
    assert new.startswith("import math\nfrom math import log\n\nimport numpy as np\n\n\n")  # `import` before `from`
    src = "import numpy as np\nfrom math import log\n\n\ndef f(x):\n    return log(1 + x)\n"  # unsorted: best effort
    assert fix_source(src)[0].startswith("import numpy as np\n\nimport math\nfrom math import log\n")


def test_a_section_after_the_last_one_and_comments_that_travel_with_an_import() -> None:
    src = "import os\n# the heavy one\nimport torch\n\n\ndef f(z):\n    return torch.log(1 - torch.exp(z))\n"
    new = fix_source(src, unsafe=True)[0]
    # a new third-party section before torch's; the comment stays on top of the import it describes
    assert new.startswith("import os\n\nimport floatguard\n# the heavy one\nimport torch\n\n\ndef f")
    src = "import torch\n\n\ndef f(z):\n    return torch.log(1 - torch.exp(z))\n"
    new = fix_source(src, unsafe=True, style=Style(first_party=frozenset({"floatguard"})))[0]
    assert new.startswith("import torch\n\nimport floatguard\n\n\ndef f(z):\n")


def test_a_file_without_imports_gets_a_block_and_the_blank_lines_after_it() -> None:
    src = '"""Doc."""\n\n\ndef f(x):\n    return x.exp().sum(-1).log()\n'
    assert fix_source(src)[0] == ('"""Doc."""\n\n\nimport torch\n\n\ndef f(x):\n'
                                  "    return torch.logsumexp(x, dim=-1)\n")
    src = "# -*- coding: utf-8 -*-\ny = x.exp().sum(-1).log()\n"  # the cookie stays on line 1
    assert fix_source(src)[0] == "# -*- coding: utf-8 -*-\nimport torch\n\ny = torch.logsumexp(x, dim=-1)\n"


def test_several_fixes_add_each_import_once_sorted() -> None:
    src = ("from math import log\n\nfrom torch import exp as t_exp\nfrom torch import log as t_log\n\n\n"
           "def f(x, y):\n    return log(1 + x), log(1 + y), t_log(t_exp(y).sum(-1))\n")
    new, n, left = fix_source(src)
    assert n == 3 and not left
    assert new.startswith("import math\nfrom math import log\n\nimport torch\nfrom torch import exp as t_exp\n"
                          "from torch import log as t_log\n\n\n")
    assert new.count("import math\n") == 1


def test_no_safe_place_means_no_fix() -> None:
    src = "import os; x = 1\n\n\ndef f(z):\n    return log(1 + z)\nfrom math import log\n"
    assert fix_source(src)[1] == 0
    src = "from math import log; y = 1\n\n\ndef f(z):\n    return log(1 + z)\n"
    assert fix_source(src)[1] == 0


# (needed import line(s), expression): each fix adds an import a module-level `import X` does not bind yet
NEEDS = [
    ("from math import log as m_log", "m_log(1 + x)"),  # -> import math (stdlib)
    ("from torch import exp as t_exp, log as t_log", "t_log(t_exp(x).sum(-1))"),  # -> import torch
    ("from numpy import exp as n_exp, log as n_log", "n_log(n_exp(x).sum())"),  # -> import numpy
    ("from jax.numpy import exp as j_exp, log as j_log", "j_log(j_exp(x).sum(-1))"),  # -> import jax.nn
    ("from torch import exp as t_exp, log as t_log", "t_log(1 - t_exp(x))"),  # -> import floatguard (unsafe)
]
BLOCK = ["from __future__ import annotations", "import os", "import sys", "import zlib", "import abc",
         "from collections import OrderedDict", "from typing import Any", "import numpy as np", "import scipy",
         "import yaml", "import torch", "import mypkg", "from mypkg import util", "from . import sibling",
         "from .. import parent", "import floatguard"]


@needs_ruff
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(block=st.lists(st.sampled_from(BLOCK), unique=True, max_size=8),
       needs=st.lists(st.sampled_from(NEEDS), min_size=1, max_size=3, unique=True),
       doc=st.booleans(), first_party=st.booleans())
def test_fixed_files_pass_ruffs_isort(tmp_path: Path, block: list[str], needs: list[tuple[str, str]], doc: bool,
                                      first_party: bool) -> None:
    """Any import block ruff has sorted stays sorted after the fixes add their imports."""
    head = ('"""Doc."""\n' if doc else "") + "".join(f"{ln}\n" for ln in [*block, *(n[0] for n in needs)])
    body = "".join(f"\n\ndef f{i}(x):\n    return {expr}\n" for i, (_, expr) in enumerate(needs))
    fp = "floatguard" if first_party else "mypkg"
    src = isort(head + body, tmp_path, fp)
    assert isort_clean(src, tmp_path, fp)
    new, n, _ = fix_source(src, unsafe=True, style=Style(first_party=frozenset({fp})))
    assert n >= len(needs)
    compile(new, "m.py", "exec")
    assert isort_clean(new, tmp_path, fp), f"{src}\n----\n{new}"


# -- the line length: read from the project, and kept --------------------------------------------------------

def test_line_length_from_the_nearest_configuration(tmp_path: Path) -> None:
    clear_caches()
    assert find_style(tmp_path).line_length == DEFAULT_LINE_LENGTH
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "p"\n\n[tool.black]\nline-length = 100\n')
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "src" / "other").mkdir(parents=True)
    (tmp_path / "src" / "other" / "__init__.py").write_text("")
    (tmp_path / "tool.py").write_text("")
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    clear_caches()
    style = find_style(sub)
    assert style.line_length == 100 and {"mypkg", "other", "tool"} <= style.first_party
    (sub / "ruff.toml").write_text("line-length = 72\n[lint.isort]\nknown-first-party = ['extra']\n")
    clear_caches()
    assert find_style(sub).line_length == 72 and "extra" in find_style(sub).first_party
    (tmp_path / "pyproject.toml").write_text("[tool.ruff]\nline-length = 120\n[tool.black]\nline-length = 100\n")
    (sub / "ruff.toml").unlink()
    clear_caches()
    assert find_style(sub).line_length == 120  # ruff's setting before black's
    (tmp_path / "pyproject.toml").write_text('[tool.ruff]\nline-length = "long"\n')
    clear_caches()
    with pytest.raises(ConfigError, match="line-length"):
        find_style(sub)
    clear_caches()


WIDE = "import numpy as np\n\n\ndef f(values):\n    out = np.log(np.exp(values).sum())  # c\n    return out\n"


def test_a_replacement_that_would_pass_the_line_length_is_wrapped(tmp_path: Path) -> None:
    new = fix_source(WIDE, style=Style(line_length=44))[0]
    assert new == ("import numpy as np\n\n\ndef f(values):\n    out = np.logaddexp.reduce(\n        values, axis=None\n"
                   "    )  # c\n    return out\n")
    # the arguments do not fit on one line either: one per line, with the trailing comma
    src = ("import numpy as np\n\n\ndef f(v):\n    return np.log(\n        np.exp(\n"
           "            values_with_a_long_name_too\n        ).sum()\n    )\n")
    new = fix_source(src, style=Style(line_length=44))[0]
    assert new.endswith("    return np.logaddexp.reduce(\n        values_with_a_long_name_too,\n        axis=None,\n"
                        "    )\n")
    assert fix_source(WIDE)[0] == WIDE.replace("np.log(np.exp(values).sum())", "np.logaddexp.reduce(values, axis=None)")


@pytest.mark.parametrize("line", [
    "    out = 1 + np.log(np.exp(values).sum()) * 2",  # the call does not end its line
    '    out = f"{np.log(np.exp(values).sum())}"',  # inside an f-string
    "    out = [np.log(np.exp(values).sum())]",  # ruff would split the list: not done here
])
def test_a_replacement_that_cannot_be_wrapped_safely_is_left_as_is(line: str) -> None:
    src = f"import numpy as np\n\n\ndef f(values):\n{line}\n    return out\n"
    new, n, _ = fix_source(src, style=Style(line_length=44))
    assert n == 1 and "np.logaddexp.reduce(values, axis=None)" in new and new.count("\n") == src.count("\n")


def test_a_line_already_too_long_is_not_reformatted() -> None:
    src = "import numpy as np\n\n\ndef f(values):\n    out = np.log(np.exp(values).sum())  # a long comment\n"
    new = fix_source(src, style=Style(line_length=40))[0]
    assert "    out = np.logaddexp.reduce(values, axis=None)  # a long comment\n" in new


@needs_ruff
@pytest.mark.parametrize(("arg", "body"), [
    ("values", "    out = np.log(np.exp(values).sum())\n    return out\n"),
    ("values", "    return np.log(np.exp(values).sum())  # c\n"),
    ("values_with_a_long_name_too",
     "    return np.log(\n        np.exp(\n            values_with_a_long_name_too\n        ).sum()\n    )\n"),
])
def test_fixed_lines_are_what_ruff_format_writes(tmp_path: Path, arg: str, body: str) -> None:
    """In a project with ``line-length = 44``: a file ``ruff format`` accepts is accepted after ``--fix``."""
    (tmp_path / "pyproject.toml").write_text("[tool.ruff]\nline-length = 44\n")
    f = tmp_path / "m.py"
    f.write_text(f"import numpy as np\n\n\ndef f({arg}):\n{body}")
    assert ruff("format", "--check", str(f), cwd=tmp_path).returncode == 0, "the example itself is not formatted"
    clear_caches()
    (res,) = lint_paths([f], fix="safe")
    assert res.fixed == 1, res.events
    new = f.read_text()
    assert "logaddexp.reduce" in new and max(len(ln) for ln in new.splitlines()) <= 44
    assert ruff("format", "--diff", str(f), cwd=tmp_path).stdout == ""


# -- a real package's own tests pass before and after --fix ----------------------------------------------------

def _networkx() -> Path:
    nx = pytest.importorskip("networkx")  # installed with the dev tools (a pure-Python package with its tests)
    return Path(nx.__file__).parent


NX_FIXED = ["generators/random_graphs.py", "algorithms/bipartite/generators.py"]
NX_TESTS = ["generators/tests/test_random_graphs.py", "algorithms/bipartite/tests/test_generators.py"]


def _nx_tests(root: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = "import networkx, sys; assert networkx.__file__.startswith(sys.argv[1]), networkx.__file__"
    subprocess.run([sys.executable, "-c", code, str(root)], cwd=root, env=env, check=True, timeout=60)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:randomly", "-p", "no:cacheprovider",
                           *(f"networkx/{t}" for t in NX_TESTS)], cwd=root, env=env, capture_output=True, text=True,
                          timeout=600)


def test_a_real_packages_tests_pass_after_fix(tmp_path: Path) -> None:
    """networkx's random-graph generators hold ``math.log(1.0 - seed.random())`` (FG106, safe fix ``log1p``):
    fixed in a copy of the package, its own tests still pass, and the edits are the only change."""
    shutil.copytree(_networkx(), tmp_path / "networkx", ignore=shutil.ignore_patterns("__pycache__"))
    before = _nx_tests(tmp_path)
    assert before.returncode == 0, before.stdout[-3000:]
    files = [tmp_path / "networkx" / f for f in NX_FIXED]
    old = [f.read_text() for f in files]
    results = lint_paths(files, select=("FG106",), fix="safe")
    assert sum(r.fixed for r in results) >= 4
    for f, text in zip(files, old, strict=True):
        new = f.read_text()
        assert "log1p(" in new and new.count("\n") == text.count("\n")  # math is imported already: no new line
        changed = [(a, b) for a, b in zip(text.splitlines(), new.splitlines(), strict=True) if a != b]
        assert changed and all("math.log(" in a and "math.log1p(" in b for a, b in changed)
    after = _nx_tests(tmp_path)
    assert after.returncode == 0, after.stdout[-3000:]
    assert after.stdout.splitlines()[-1].split(" in ")[0] == before.stdout.splitlines()[-1].split(" in ")[0]
