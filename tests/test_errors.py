"""floatguard.errors: one OptionalDependencyError, naming the extra, at every optional import.

Missing packages are simulated with ``sys.modules[name] = None`` (what ``import`` treats as
"not installed"), in a subprocess wherever the package may already be imported here.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import floatguard
from floatguard.errors import EXTRAS, OptionalDependencyError, missing, require

SRC = Path(floatguard.__file__).parent


def _run_blocked(blocked: list[str], code: str) -> str:
    """Run ``code`` in a fresh interpreter where ``blocked`` cannot be imported; return its stdout."""
    prelude = "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in blocked)
    proc = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


_IMPORT = "from floatguard.errors import OptionalDependencyError\n"
_EXPECT_ERROR = """
def expect(fn):
    try:
        fn()
    except OptionalDependencyError as e:
        assert isinstance(e, ImportError)
        print(f"{e.package}|{e.extra}|{e}")
    else:
        raise AssertionError("no OptionalDependencyError")
"""


def test_require_returns_the_module():
    assert require("numpy.linalg").__name__ == "numpy.linalg"


@pytest.mark.parametrize(("package", "extra"), sorted(EXTRAS.items()))
def test_require_names_the_extra_of_each_optional_package(monkeypatch, package, extra):
    monkeypatch.setitem(sys.modules, package, None)
    with pytest.raises(OptionalDependencyError) as info:
        require(package, feature="the test")
    err = info.value
    assert isinstance(err, ImportError)
    assert (err.package, err.extra, err.name) == (package, extra, package)
    assert str(err) == f"the test needs {package}: pip install 'floatguard[{extra}]'"
    assert isinstance(err.__cause__, ImportError)


def test_a_package_no_extra_installs_names_itself(monkeypatch):
    monkeypatch.setitem(sys.modules, "lightning", None)
    monkeypatch.setitem(sys.modules, "lightning.pytorch", None)  # an earlier test in this process may have imported it
    with pytest.raises(OptionalDependencyError, match=r"^lightning\.pytorch needs lightning: pip install lightning$"):
        require("lightning.pytorch", feature="lightning.pytorch")
    assert missing("transformers").extra is None


def test_explicit_extra_wins_and_the_error_is_exported():
    assert missing("torch.nn", "all").extra == "all"
    assert floatguard.OptionalDependencyError is OptionalDependencyError


def test_monitor_without_torch_names_the_torch_extra():
    out = _run_blocked(["torch"], _IMPORT + _EXPECT_ERROR + """
import floatguard as fg
import floatguard.monitor as m
expect(lambda: fg.Monitor)
expect(lambda: m.attach_global())
""")
    lines = out.splitlines()
    assert lines == [
        "torch|torch|floatguard.Monitor needs torch: pip install 'floatguard[torch]'",
        "torch|torch|floatguard.monitor.attach_global needs torch: pip install 'floatguard[torch]'",
    ]


def test_sanitizer_without_torch_or_jax_names_their_extras():
    out = _run_blocked(["torch", "jax"], _IMPORT + _EXPECT_ERROR + """
import floatguard as fg
from floatguard.sanitize import checkify_report
expect(lambda: fg.guard)
expect(lambda: fg.detect(torch=True).__enter__())
expect(lambda: checkify_report(abs, 1.0))
""")
    assert out.splitlines() == [
        "torch|torch|floatguard.guard needs torch: pip install 'floatguard[torch]'",
        "torch|torch|detect(torch=True) needs torch: pip install 'floatguard[torch]'",
        "jax|jax|checkify_report needs jax: pip install 'floatguard[jax]'",
    ]


def test_ops_on_torch_tensors_without_array_api_compat():
    pytest.importorskip("torch")
    out = _run_blocked(["array_api_compat"], _IMPORT + _EXPECT_ERROR + """
import torch
import floatguard as fg
expect(lambda: fg.logsumexp(torch.ones(3)))
""")
    assert out.startswith("array_api_compat|torch|")
    assert out.endswith("pip install 'floatguard[torch]'")


@pytest.mark.parametrize(("module", "blocked", "package"), [
    ("floatguard.monitor.lightning", ["lightning", "pytorch_lightning"], "lightning"),
    ("floatguard.monitor.huggingface", ["transformers"], "transformers"),
])
def test_framework_callbacks_without_their_framework(module, blocked, package):
    pytest.importorskip("torch")
    call = f"import importlib\nexpect(lambda: importlib.import_module({module!r}))\n"
    out = _run_blocked(blocked, _IMPORT + _EXPECT_ERROR + call)
    assert out == f"{package}|None|{module} needs {package}: pip install {package}"


def test_testing_without_mpmath_names_the_dev_extra():
    out = _run_blocked(["mpmath"], _IMPORT + _EXPECT_ERROR + """
from floatguard import testing
expect(lambda: testing.ref_logsumexp([0.0, 1.0]))
""")
    assert out == "mpmath|dev|floatguard.testing needs mpmath: pip install 'floatguard[dev]'"


def test_no_module_builds_its_own_missing_dependency_error():
    """Every OptionalDependencyError comes from floatguard.errors (missing/require), so all read alike."""
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        if path.name == "errors.py" and path.parent == SRC:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name | ast.Attribute)
                    and getattr(node.func, "id", getattr(node.func, "attr", None)) == "OptionalDependencyError"):
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert offenders == []
