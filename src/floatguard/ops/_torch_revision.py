"""A mark of the revision of floatguard's custom ops in every graph ``torch.compile`` traces through them.

``torch.compile`` keeps compiled graphs in an on-disk cache (``TORCHINDUCTOR_CACHE_DIR``, on by default), and its
AOTAutograd layer keys a graph by the graph Dynamo traced and its inputs: a custom op is there by its name and its
arguments, not by its schema, its fake function or its backward (torch 2.13). A floatguard upgrade that changes what
an op returns finds the other version's compiled graph under the same key. Met in development: with an output added
to ``floatguard::softmax_columns``, a process running the code without it hit the entry the other had written and
failed inside Inductor's generated code (``IndexError: tuple index out of range``) until the cache was cleared by
hand; the other way round, the old graph ran without a word, its plumbing not the code's.

So every traced call of the custom ops first adds ``floatguard::revision(x, REV)``, ``REV`` a hash of floatguard's
version and of the source of the modules that define the custom ops (their schemas, fakes and backward rules): a new
revision is a new key, and the old entries are left unused. The op returns an empty tensor that nothing reads, and
AOTAutograd removes it from the graph it compiles: no cost at run time (the compiled code is the same, and Inductor's
own cache, keyed by that code, still hits).
"""

from __future__ import annotations

import contextlib
import hashlib
from importlib import metadata
from pathlib import Path

import torch

# the modules whose custom ops (schemas, fake functions, autograd rules) a compiled graph's plumbing depends on
_OP_MODULES = ("_torch_custom_ops.py", "_torch_elementwise_compile.py", "_torch_ce_compile.py",
               "_torch_columns_compile.py")


def _revision() -> str:
    digest = hashlib.sha256()
    with contextlib.suppress(metadata.PackageNotFoundError):  # a source tree run without installing: the sources
        digest.update(metadata.version("floatguard").encode())
    here = Path(__file__).parent
    for name in _OP_MODULES:
        digest.update(name.encode())
        digest.update(_source(here / name))
    return digest.hexdigest()[:16]


def _source(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:  # a package without its files on disk (a zip): the version alone
        return b""


REV = _revision()


@torch.library.custom_op("floatguard::revision", mutates_args=())
def revision_op(x: torch.Tensor, rev: str) -> torch.Tensor:
    """An empty tensor: the op exists for its argument ``rev`` in the traced graph (see the module docstring)."""
    return x.new_empty(0)


@revision_op.register_fake
def _(x: torch.Tensor, rev: str) -> torch.Tensor:
    return x.new_empty(0)


def stamp(x: torch.Tensor) -> None:
    """Put the revision of the custom ops into the graph ``torch.compile`` is tracing (call it while tracing, before
    the first custom op of a call; ``x``: any tensor of the call). Not into ``torch.export``'s graphs: they are not
    cached, and an exported program would keep the op."""
    if not torch.compiler.is_exporting():
        revision_op(x, REV)
