"""The per-file result cache and the text pre-filter: faster, and never a different answer."""

from __future__ import annotations

import ast
import gc
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import floatguard.lint.engine as engine
import floatguard.lint.resolve as resolve
from floatguard.events import Event
from floatguard.lint import lint_paths, lint_source
from floatguard.lint.astwalk import children
from floatguard.lint.cache import CACHE_DIR_NAME, Cache, default_cache_dir
from floatguard.lint.cli import main
from floatguard.lint.config import ConfigError
from floatguard.lint.engine import analyse, iter_python_files, may_find
from floatguard.lint.resolve import OpContext, _statements, walk

BUGGY = "import torch\n\n\ndef f(x):\n    return torch.log(torch.sum(torch.exp(x), dim=-1))\n"
OTHER = "import numpy as np\n\n\ndef g(z):\n    return np.log(1 + np.exp(z))\n"
CORPUS = Path(__file__).parent / "corpus"


def key(results: list[engine.FileResult]) -> list[tuple[str, int, list[dict[str, object]]]]:
    return [(r.path, r.lines, [e.to_dict() for e in r.events]) for r in results]


def tree(tmp_path: Path, n: int = 3) -> Path:
    d = tmp_path / "src"
    d.mkdir()
    for i in range(n):
        (d / f"m{i}.py").write_text(BUGGY if i % 2 == 0 else OTHER)
    return d


class Counting:
    """Counts the files analysed (the cache's misses)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[str] = []
        real = engine.analyse

        def counted(source: str, path: str, *args: object, **kwargs: object) -> object:
            self.calls.append(path)
            return real(source, path, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(engine, "analyse", counted)


def test_a_hit_gives_the_same_results_without_checking_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src, cache = tree(tmp_path), tmp_path / "cache"
    plain = lint_paths([src], jobs=1, use_config=False, select=("ALL",))
    count = Counting(monkeypatch)
    first = lint_paths([src], jobs=1, use_config=False, cache_dir=cache, select=("ALL",))
    assert key(first) == key(plain) and len(count.calls) == 3
    assert sum(len(r.events) for r in plain) == 3  # FG101 twice, FG105 (opt-in) once: something worth caching
    second = lint_paths([src], jobs=1, use_config=False, cache_dir=cache, select=("ALL",))
    assert key(second) == key(plain) and len(count.calls) == 3  # nothing analysed again
    assert (cache / ".gitignore").read_text().strip().endswith("*")


def test_entries_are_invalidated_by_content_settings_and_version(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    src, cache = tree(tmp_path), tmp_path / "cache"
    lint_paths([src], jobs=1, use_config=False, cache_dir=cache)
    count = Counting(monkeypatch)
    (src / "m0.py").write_text(BUGGY.replace("dim=-1", "dim=0"))  # content
    res = lint_paths([src], jobs=1, use_config=False, cache_dir=cache)
    assert [Path(p).name for p in count.calls] == ["m0.py"]
    assert "dim=0" in res[0].events[0].fix.edits[0].text  # type: ignore[union-attr]
    count.calls.clear()
    res = lint_paths([src], jobs=1, use_config=False, cache_dir=cache, select=("FG105",))  # settings
    assert len(count.calls) == 3 and [e.code for r in res for e in r.events] == ["FG105"]
    count.calls.clear()
    (tmp_path / "pyproject.toml").write_text("[tool.ruff]\nline-length = 40\n")  # the project's style
    from floatguard.lint.config import clear_caches

    clear_caches()
    lint_paths([src], jobs=1, use_config=False, cache_dir=cache)
    assert len(count.calls) == 3
    clear_caches()
    count.calls.clear()
    monkeypatch.setattr("floatguard.lint.cache.linter_fingerprint", lambda: "another-version")  # the linter
    res = lint_paths([src], jobs=1, use_config=False, cache_dir=cache)
    assert len(count.calls) == 3 and (cache / "another-version").is_dir()


def test_a_corrupted_entry_is_ignored_and_rewritten(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src, cache = tree(tmp_path, 1), tmp_path / "cache"
    good = lint_paths([src], jobs=1, use_config=False, cache_dir=cache)
    (entry,) = [p for p in cache.rglob("*.json")]
    for junk in (b"{not json", b"", b'{"key": "x", "lines": 1, "events": []}', b"[1, 2]",
                 json.dumps({"key": entry.stem, "lines": 5, "events": [{"kind": 3}]}).encode()):
        entry.write_bytes(junk)
        count = Counting(monkeypatch)
        assert key(lint_paths([src], jobs=1, use_config=False, cache_dir=cache)) == key(good)
        assert len(count.calls) == 1  # checked again ...
        assert json.loads(entry.read_bytes())["key"] == entry.stem  # ... and the entry written anew


def test_an_unwritable_cache_is_not_an_error(tmp_path: Path) -> None:
    src = tree(tmp_path, 1)
    blocker = tmp_path / "file"
    blocker.write_text("")
    res = lint_paths([src], jobs=1, use_config=False, cache_dir=blocker / "cache")  # a file where a dir should be
    assert [e.code for r in res for e in r.events] == ["FG101"]


def test_fix_runs_do_not_read_the_cache(tmp_path: Path) -> None:
    src, cache = tree(tmp_path, 1), tmp_path / "cache"
    lint_paths([src], jobs=1, use_config=False, cache_dir=cache)
    (res,) = lint_paths([src], fix="safe", jobs=1, use_config=False, cache_dir=cache)
    assert res.fixed == 1 and "torch.logsumexp" in (src / "m0.py").read_text()


def test_concurrent_writers_share_a_cache(tmp_path: Path) -> None:
    """Two runs at once over one tree and one cache: both right, no half-written entry, no temporary file."""
    src = tree(tmp_path, 40)
    cache = tmp_path / "cache"
    code = ("import sys\nfrom floatguard.lint.cli import main\n"
            "raise SystemExit(main([sys.argv[1], '--no-config', '--format', 'json', '-j', '2', '--cache-dir', "
            "sys.argv[2]]))\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(src), str(cache)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    expected = [e.to_dict() for r in lint_paths([src], jobs=1, use_config=False) for e in r.events]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 1, err
        assert json.loads(out) == expected
    entries = list(cache.rglob("*.json"))
    assert len(entries) == 40 and not list(cache.rglob("*.tmp"))
    for e in entries:
        assert json.loads(e.read_bytes())["key"] == e.stem


def test_cli_cache_in_the_project_root_and_no_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'p'\n")
    src = tree(tmp_path, 1)
    sub = tmp_path / "docs"
    sub.mkdir()
    monkeypatch.chdir(sub)
    assert default_cache_dir() == tmp_path / CACHE_DIR_NAME
    assert main([str(src), "--no-cache"]) == 1
    assert not (tmp_path / CACHE_DIR_NAME).exists()
    uncached = capsys.readouterr().out
    assert main([str(src)]) == 1
    first = capsys.readouterr().out
    assert first == uncached and (tmp_path / CACHE_DIR_NAME).is_dir()
    assert main([str(src)]) == 1 and capsys.readouterr().out == first
    other = tmp_path / "elsewhere"
    assert main([str(src), "--cache-dir", str(other)]) == 1 and other.is_dir()
    assert Cache(other).dir.is_dir()


# -- the pre-filter ---------------------------------------------------------------------------------------------

def test_the_prefilter_words_come_from_the_rules_op_names() -> None:
    assert may_find("y = x.exp()") and may_find("from numpy import log") and may_find("F.softmax(a)")
    assert not may_find("import torch\nimport numpy as np\n\ndef f(a, b):\n    return a + b\n")
    assert not may_find("expected = logger.explog('exponent')")  # words, not substrings


def _all_findings(files: list[Path], monkeypatch: pytest.MonkeyPatch, on: bool) -> list[tuple[str, int, str]]:
    if not on:
        monkeypatch.setattr(engine, "may_find", lambda source: True)
    out = []
    for f in files:
        src = engine.decode_source(f.read_bytes())[0]
        out += [(str(f), e.line or 0, e.code or "") for e in analyse(src, str(f))[0]]
    monkeypatch.undo()
    return out


def _package_with_findings() -> Path:
    import torch

    return Path(torch.__file__).parent / "distributions"


def test_the_prefilter_never_drops_a_finding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On the rule corpus and on a copy of a real package: every rule, with and without the pre-filter."""
    pkg = tmp_path / "pkg"
    shutil.copytree(_package_with_findings(), pkg)
    files = list(iter_python_files([CORPUS, pkg]))
    skipped = [f for f in files if not may_find(f.read_text(encoding="utf-8", errors="replace"))]
    assert len(files) > 50 and skipped  # it does skip files
    with_filter = _all_findings(files, monkeypatch, on=True)
    without = _all_findings(files, monkeypatch, on=False)
    assert len(without) > 50
    assert with_filter == without


def test_a_skipped_file_still_reports_its_syntax_error() -> None:
    events, _ = analyse("def f(:\n    pass\n", "x.py")
    assert [e.code for e in events] == ["FG000"] and not may_find("def f(:\n    pass\n")


def test_entries_are_keyed_by_the_path_shown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src, cache = tree(tmp_path, 1), tmp_path / "cache"
    lint_paths([src], jobs=1, use_config=False, cache_dir=cache)
    monkeypatch.chdir(src)
    count = Counting(monkeypatch)
    (res,) = lint_paths(["m0.py"], jobs=1, use_config=False, cache_dir=cache)
    # the same text shown under another name: checked again, so its findings name the file as it is given
    assert res.path == "m0.py" and res.events[0].file == "m0.py" and count.calls == ["m0.py"]


# -- findings that depend on other modules of the package -----------------------------------------------------

NOT_A_SOFTMAX = "import torch\n\n\ndef helper(x):\n    return torch.abs(x)\n"
SOFTMAX = "import torch\n\n\ndef _sm(x):\n    return torch.softmax(x, dim=-1)\n"
VIA_CORE = "from .core import _sm\n\n\ndef helper(x):\n    return _sm(x)\n"
LOG_OF_HELPER = "from .utils import helper\n\n\ndef f(x):\n    return torch.log(helper(x))\n"


def _package(tmp_path: Path, **modules: str) -> Path:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for name, text in modules.items():
        (pkg / f"{name}.py").write_text(text)
    return pkg


def _codes(results: list[engine.FileResult], name: str) -> list[str]:
    return [e.code or "" for r in results if Path(r.path).name == name for e in r.events]


def test_editing_an_imported_helper_changes_the_cached_result(tmp_path: Path) -> None:
    """``torch.log(helper(x))`` with utils.helper returning ``torch.softmax(x, dim=-1)`` is a log of a softmax
    (FG102); editing utils.py alone must change main.py's cached result although main.py's bytes and the
    settings are the same."""
    pkg = _package(tmp_path, utils=SOFTMAX.replace("_sm", "helper"),
                   main=LOG_OF_HELPER.replace("from .utils", "import torch\nfrom .utils"))
    cache = tmp_path / "cache"
    uncached = lint_paths([pkg], jobs=1, use_config=False)
    assert _codes(uncached, "main.py") == ["FG102"]  # log(softmax(x)) through the helper of utils.py
    assert key(lint_paths([pkg], jobs=1, use_config=False, cache_dir=cache)) == key(uncached)
    assert key(lint_paths([pkg], jobs=1, use_config=False, cache_dir=cache)) == key(uncached)  # from the cache
    (pkg / "utils.py").write_text(NOT_A_SOFTMAX)  # the helper is no longer a softmax: no finding
    stopped = lint_paths([pkg], jobs=1, use_config=False, cache_dir=cache)
    assert _codes(stopped, "main.py") == [] and key(stopped) == key(lint_paths([pkg], jobs=1, use_config=False))
    (pkg / "utils.py").write_text(SOFTMAX.replace("_sm", "helper"))  # and back: the finding again
    assert key(lint_paths([pkg], jobs=1, use_config=False, cache_dir=cache)) == key(uncached)


def test_a_helper_two_modules_away_is_part_of_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """main.py -> utils.helper -> core._sm -> torch.softmax: an edit of core.py changes main.py's result."""
    pkg = _package(tmp_path, core=SOFTMAX, utils=VIA_CORE,
                   main=LOG_OF_HELPER.replace("from .utils", "import torch\nfrom .utils"))
    cache = tmp_path / "cache"
    assert _codes(lint_paths([pkg], jobs=1, use_config=False, cache_dir=cache), "main.py") == ["FG102"]
    count = Counting(monkeypatch)
    (pkg / "core.py").write_text(SOFTMAX.replace("torch.softmax(x, dim=-1)", "torch.tanh(x)"))
    res = lint_paths([pkg], jobs=1, use_config=False, cache_dir=cache)
    assert _codes(res, "main.py") == []
    # core.py itself, and the two files that import from it (directly or not): nothing else is checked again
    assert sorted(Path(p).name for p in count.calls) == ["core.py", "main.py", "utils.py"]


def test_a_file_without_op_words_that_calls_a_package_helper_is_not_skipped(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """caller.py names no operation (the text test alone would skip it), but its helpers from utils.py are
    ``torch.exp`` and ``torch.log``: ``1 / (1 + ex(-x))`` is a naive sigmoid and ``lg(1 + ex(x))`` a naive
    softplus. The pre-filter must keep it: the same findings with and without it."""
    utils = "import torch\n\n\ndef lg(x):\n    return torch.log(x)\n\n\ndef ex(x):\n    return torch.exp(x)\n"
    caller = ("from .utils import ex, lg\n\n\ndef g(x):\n    return 1 / (1 + ex(-x))\n\n\n"
              "def h(x):\n    return lg(1 + ex(x))\n")
    assert not may_find(caller)
    pkg = _package(tmp_path, utils=utils, caller=caller)
    with_filter = [(Path(p).name, e.line, e.code) for p, e in _events(pkg)]
    assert with_filter == [("caller.py", 5, "FG109"), ("caller.py", 9, "FG105")]
    monkeypatch.setattr(engine, "may_find", lambda source: True)
    assert with_filter == [(Path(p).name, e.line, e.code) for p, e in _events(pkg)]
    # a file with neither op words nor a relative import is still skipped (not walked)
    monkeypatch.undo()
    walked: list[str] = []
    monkeypatch.setattr(engine.Context, "__init__", _counting_init(walked))
    analyse("import os\n\n\ndef f(x):\n    return os.path.join(x)\n", "plain.py")
    analyse(caller, str(pkg / "caller.py"))
    assert walked == [str(pkg / "caller.py")]


def _counting_init(calls: list[str]) -> object:
    real = engine.Context.__init__

    def init(self: engine.Context, source: str, tree: object, path: str = "<string>") -> None:
        calls.append(path)
        real(self, source, tree, path)  # type: ignore[arg-type]

    return init


def _events(pkg: Path) -> list[tuple[str, Event]]:
    return [(r.path, e) for r in lint_paths([pkg], jobs=1, use_config=False, select=("ALL",)) for e in r.events]


# -- the fast paths of a cold run: the same answers as the plain ones -----------------------------------------

_SINGLETONS = (ast.expr_context, ast.operator, ast.unaryop, ast.boolop, ast.cmpop)


def _sample_trees() -> list[ast.Module]:
    """The rule corpus, the linter's own sources and a real package (torch.distributions)."""
    lint_src = Path(engine.__file__).parent
    files = list(iter_python_files([CORPUS, lint_src, _package_with_findings()]))
    trees = [ast.parse(engine.decode_source(f.read_bytes())[0]) for f in files if f.suffix == ".py"]
    assert len(trees) > 100
    return trees


NESTED_IMPORTS = """\
import numpy as np
try:
    import torch as np
except ImportError:
    from jax import numpy as jnp
else:
    import scipy.special as sp
finally:
    import math
with open(p) as fh:
    from torch.nn import functional as F
match x:
    case 1:
        import torch.nn.functional as F
class C:
    def f(self):
        import numpy as np
        return [lambda: 1 for _ in range(3)]
for i in range(3):
    if i:
        from numpy import exp
    while False:
        from torch import exp
    else:
        import jax.numpy as np
"""


def test_walk_visits_every_node_once_with_its_parent() -> None:
    """:func:`~floatguard.lint.resolve.walk` is ``ast.walk`` with ``ast.iter_child_nodes`` (the shared operator and
    context singletons aside): every node once, each child's parent the node that holds it."""
    for tree in [*_sample_trees(), ast.parse(NESTED_IMPORTS)]:
        parents: dict[int, ast.AST] = {}
        nodes = walk(tree, parents)
        expected = [n for n in ast.walk(tree) if not isinstance(n, _SINGLETONS)]
        assert sorted(map(id, nodes)) == sorted(map(id, expected)) and len(nodes) == len(set(map(id, nodes)))
        for n in expected:
            for child in ast.iter_child_nodes(n):
                if not isinstance(child, _SINGLETONS):
                    assert parents[id(child)] is n
        assert len(parents) == len(nodes) - 1  # every node but the module has one
        seen: set[int] = set()
        for n in nodes:  # parents before children: the order the rules rely on
            assert n is tree or id(parents[id(n)]) in seen
            seen.add(id(n))
        wanted = {ast.Call, ast.BinOp}  # the rules' node types only: the same nodes in the same order
        assert walk(tree, {}, wanted) == [n for n in nodes if type(n) in wanted]


def test_children_are_iter_child_nodes_without_the_singletons() -> None:
    """:func:`~floatguard.lint.astwalk.children` gives the nodes of :func:`ast.iter_child_nodes` in its order, the
    shared operator and context singletons aside, for every node of the sample trees."""
    for tree in [*_sample_trees(), ast.parse(NESTED_IMPORTS)]:
        for n in ast.walk(tree):
            assert children(n) == [c for c in ast.iter_child_nodes(n) if not isinstance(c, _SINGLETONS)]


def _class_attrs_by_ast_walk(cls: ast.ClassDef) -> dict[str, ast.expr]:
    """``self.x = ...`` assignments in ``cls`` as :meth:`FlowContext.class_attrs` read them with ``ast.walk``."""
    attrs: dict[str, ast.expr] = {}
    for sub in ast.walk(cls):
        if isinstance(sub, ast.Assign) and len(sub.targets) == 1:
            t = sub.targets[0]
            if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self":
                attrs[t.attr] = sub.value
    return attrs


def _returns_by_iter_child_nodes(func: ast.FunctionDef | ast.AsyncFunctionDef) -> list[ast.expr]:
    out: list[ast.expr] = []
    stack: list[ast.AST] = list(func.body)
    while stack:
        n = stack.pop()
        if isinstance(n, ast.Return) and n.value is not None:
            out.append(n.value)
        elif not isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
            stack.extend(ast.iter_child_nodes(n))
    return out


TWICE = """class C:
    def __init__(self):
        self.act = nn.Sigmoid()
        if cond:
            self.act = nn.Softmax()
    def g(self):
        def h():
            return 1
        try:
            return self.act(x)
        except E:
            return None
"""


def test_class_attrs_and_returns_keep_the_order_of_the_plain_walks() -> None:
    """A class's ``self.x = ...`` (the last one in ``ast.walk``'s order wins) and a function's returns are the same
    values, in the same order, as with ``ast.walk`` / ``ast.iter_child_nodes``."""
    for tree in [*_sample_trees(), ast.parse(TWICE)]:
        ctx = OpContext("", tree)
        for n in ast.walk(tree):
            if isinstance(n, ast.ClassDef):
                assert ctx.class_attrs(n) == _class_attrs_by_ast_walk(n)
            elif isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef):
                assert ctx.returns(n) == _returns_by_iter_child_nodes(n)
    cls = ast.parse(TWICE).body[0]
    assert isinstance(cls, ast.ClassDef)
    assert ast.unparse(OpContext("", ast.Module(body=[cls], type_ignores=[])).class_attrs(cls)["act"]) == \
        "nn.Softmax()"


def test_imports_are_read_in_the_order_of_ast_walk() -> None:
    """Only statements are looked into for imports, in ``ast.walk``'s order (the import read last wins an
    alias): the same imports in the same order, and so the same aliases."""
    for tree in [*_sample_trees(), ast.parse(NESTED_IMPORTS)]:
        imports = (ast.Import, ast.ImportFrom)
        assert [n for n in _statements(tree) if isinstance(n, imports)] == \
            [n for n in ast.walk(tree) if isinstance(n, imports)]
    ctx = OpContext(NESTED_IMPORTS, ast.parse(NESTED_IMPORTS))
    assert ctx.imports["np"] == "jax.numpy" and ctx.imports["F"] == "torch.nn.functional"  # the deepest, last
    assert ctx.imports["exp"] == "torch.exp" and "sp" in ctx.imports and "jnp" in ctx.imports


MODULE_OPS = """\
import torch
import torch.nn as nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.act = nn.Sigmoid()

    def forward(self, x):
        return torch.log(self.act(x))


def g(x):
    sm = nn.Softmax(dim=-1)
    return torch.log(sm(x))
"""


def test_may_call_is_false_only_where_the_text_names_no_such_object() -> None:
    """The text test before following a callee back: ``nn.Sigmoid()`` bound to a name or an attribute is still
    found; a file that names no such module, or a loss, says so; a non-ASCII text always may."""
    assert [e.code for e in lint_source(MODULE_OPS)] == ["FG117", "FG102"]
    ctx = OpContext(MODULE_OPS, ast.parse(MODULE_OPS))
    assert ctx.may_call("Sigmoid", "Softmax") and not ctx.may_call("BCELoss") and not ctx.may_call("no-such-kind")
    plain = "import torch\n\n\ndef f(x):\n    return torch.log(x.sum())\n"
    assert not OpContext(plain, ast.parse(plain)).may_call("Sigmoid", "Softmax", "LogSoftmax")
    accented = plain.replace("def f(x)", "def f(x, é=1)")
    assert OpContext(accented, ast.parse(accented)).may_call("Sigmoid")


def test_the_text_test_of_may_call_never_drops_a_finding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every rule on the rule corpus and a real package, with ``may_call`` as it is and always True: the same
    findings (messages, positions and fixes)."""
    files = [f for f in iter_python_files([CORPUS, _package_with_findings()]) if f.suffix == ".py"]
    sources = [(str(f), engine.decode_source(f.read_bytes())[0]) for f in files]
    skipped = [p for p, s in sources if not OpContext(s, ast.parse(s)).may_call("Sigmoid", "Softmax", "LogSoftmax")]
    assert skipped  # the test is taken somewhere

    def findings() -> list[dict[str, object]]:
        return [e.to_dict() for p, s in sources for e in analyse(s, p)[0]]

    fast = findings()
    monkeypatch.setattr(OpContext, "may_call", lambda self, *kinds: True)
    assert len(fast) > 50 and findings() == fast


def test_a_text_is_parsed_once_for_the_check_and_for_its_helpers(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """utils.py is read for its helper when main.py is checked, and checked itself: one parse, one tree, the same
    findings as parsing each time."""
    pkg = _package(tmp_path, utils=SOFTMAX.replace("_sm", "helper"),
                   main=LOG_OF_HELPER.replace("from .utils", "import torch\nfrom .utils"))
    resolve._TREES.clear()
    parsed: list[int] = []
    real = ast.parse

    def counting(source: str, *args: object, **kwargs: object) -> ast.Module:
        parsed.append(len(source))
        return real(source, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ast, "parse", counting)
    once = key(lint_paths([pkg], jobs=1, use_config=False))
    assert _codes(lint_paths([pkg], jobs=1, use_config=False), "main.py") == ["FG102"]
    assert len(parsed) == 3  # __init__.py, main.py, utils.py: each once, although utils.py is needed twice
    s = "x = 1\n"
    assert resolve.parse(s) is resolve.parse(s) and resolve.parse(s) is not resolve.parse("x = 2\n")
    for i in range(resolve._MAX_TREES + 5):
        resolve.parse(f"x = {i}\n")
    assert len(resolve._TREES) == resolve._MAX_TREES
    monkeypatch.setattr(resolve, "_MAX_TREES", 0)  # nothing kept: every text parsed again, the same answers
    resolve._TREES.clear()
    assert key(lint_paths([pkg], jobs=1, use_config=False)) == once


def test_a_run_leaves_the_garbage_collector_as_it_was(tmp_path: Path) -> None:
    """A run tunes the cyclic collector for its time only (also when it stops on an error)."""
    before, frozen = gc.get_threshold(), gc.get_freeze_count()
    seen: list[tuple[int, int, int]] = []
    real = engine.lint_file

    def spy(*args: object, **kwargs: object) -> engine.FileResult:
        seen.append(gc.get_threshold())
        return real(*args, **kwargs)  # type: ignore[arg-type]

    src = tree(tmp_path, 2)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine, "lint_file", spy)
        lint_paths([src], jobs=1, use_config=False)
    assert seen and all(t[0] == engine._GC_THRESHOLD for t in seen)
    assert gc.get_threshold() == before and gc.get_freeze_count() == frozen
    with pytest.raises(ConfigError):
        lint_paths([src], jobs=1, use_config=False, select=("XX9",))
    assert gc.get_threshold() == before and gc.get_freeze_count() == frozen


def test_paths_are_resolved_as_path_resolve_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """:meth:`Config._rel` reads directories' resolutions from a cache: the same answer as ``Path.resolve()`` for
    files, links to files, files under linked directories, relative paths and ``..`` (and after
    :func:`clear_caches`, a directory link moved to another target)."""
    from floatguard.lint.config import Config, _resolved, clear_caches

    (tmp_path / "proj" / "pkg" / "tests").mkdir(parents=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "proj" / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / "proj" / "pkg" / "tests" / "t.py").write_text("x = 1\n")
    (tmp_path / "other" / "b.py").write_text("x = 1\n")
    (tmp_path / "proj" / "link.py").symlink_to(tmp_path / "other" / "b.py")
    (tmp_path / "proj" / "dirlink").symlink_to(tmp_path / "proj" / "pkg")
    (tmp_path / "proj" / "away").symlink_to(tmp_path / "other")
    monkeypatch.chdir(tmp_path / "proj")
    clear_caches()
    paths = [Path(p) for p in ("pkg/a.py", "link.py", "dirlink/a.py", "dirlink/tests/t.py", "away/b.py",
                               "pkg/../link.py", "dirlink/../pkg/a.py", "../other/b.py", "missing/c.py", "..", ".")]
    paths += [tmp_path / "proj" / p for p in paths]
    cfg = Config(root=tmp_path / "proj")

    def rel(path: Path) -> str:  # what _rel computed before its cache
        for base in (cfg.root, Path.cwd()):
            if base is not None:
                try:
                    return path.resolve().relative_to(base.resolve()).as_posix()
                except ValueError:
                    pass
        return path.as_posix()

    for p in paths:
        assert _resolved(p, str(Path.cwd())) == p.resolve(), p
        assert cfg._rel(p) == rel(p), p
    assert cfg._rel(Path("dirlink/tests/t.py")) == "pkg/tests/t.py"
    assert "FG101" not in cfg.codes_for(Path("dirlink/tests/t.py"), ("ALL",))  # tests/: quiet by default
    (tmp_path / "proj" / "dirlink").unlink()
    (tmp_path / "proj" / "dirlink").symlink_to(tmp_path / "other")
    clear_caches()
    assert _resolved(Path("dirlink/b.py"), str(Path.cwd())) == (tmp_path / "other" / "b.py").resolve()
    assert cfg._rel(Path("dirlink/b.py")) == rel(Path("dirlink/b.py")) == "dirlink/b.py"  # outside both bases
    clear_caches()


def test_the_linter_imports_no_numpy_and_the_package_names_stay(tmp_path: Path) -> None:
    """``floatguard`` gives its ops on first use (PEP 562): a lint run never imports NumPy (0.1 s of every cold
    run), and every public name is still there, the ops' names exactly ``floatguard.ops.__all__``."""
    f = tmp_path / "m.py"
    f.write_text(BUGGY)
    code = ("import sys, runpy; sys.argv = ['floatguard', '--no-config', '--no-cache', '--exit-zero', '-j', '1', "
            f"{str(f)!r}]\ntry:\n    runpy.run_module('floatguard.lint', run_name='__main__')\nexcept SystemExit:\n"
            "    pass\nprint('numpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "FG101" in out and out.split()[-1] == "False"
    import floatguard
    import floatguard.ops

    lazy_ops = {name for name, module in floatguard._LAZY.items() if module == "floatguard.ops"}
    assert lazy_ops == set(floatguard.ops.__all__)
    namespace: dict[str, object] = {}
    exec("from floatguard import *", namespace)
    for name in floatguard.__all__:
        assert name in dir(floatguard) and namespace[name] is getattr(floatguard, name)
    assert floatguard.logsumexp is floatguard.ops.logsumexp
    with pytest.raises(AttributeError, match="no attribute 'logsumexpp'"):
        floatguard.logsumexpp  # noqa: B018
    # a subpackage is an attribute before anything imported it, as when the ops were imported eagerly
    fresh = ("import sys, floatguard as fg; assert 'floatguard.ops' not in sys.modules; "
             "assert fg.ops.logsumexp is fg.logsumexp and fg.sanitize.detect is fg.detect; print('ok')")
    assert subprocess.run([sys.executable, "-c", fresh], capture_output=True, text=True,
                          check=True).stdout.strip() == "ok"
