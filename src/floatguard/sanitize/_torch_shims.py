"""The private corners of torch the sanitizer relies on, in one place.

Each name here is a private or semi-private torch API (the autograd sequence number, the
node being run in backward, the dispatch-mode stack, the autograd engine's callback
queue); a torch release that renames one breaks this file only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode, _pop_mode, _push_mode

__all__ = ["current_dispatch_mode", "current_node", "is_compiling", "node_op", "pop_mode", "push_mode",
           "queue_backward_callback", "saved_tensors_hooks", "seq_nr", "storage_key"]

seq_nr: Callable[[], int] = torch._C._autograd._get_sequence_nr
"""The sequence number the next autograd node will get (an op that made a node moved it)."""
current_node: Callable[[], Any] = torch._C._current_autograd_node
"""The autograd node whose backward is running in this thread (None in forward)."""
is_compiling: Callable[[], bool] = torch.compiler.is_compiling
saved_tensors_hooks: Callable[[bool], Any] = torch._C._autograd._top_saved_tensors_default_hooks
"""The innermost ``torch.autograd.graph.saved_tensors_hooks`` (pack, unpack) pair active now, or None."""
current_dispatch_mode = _get_current_dispatch_mode
pop_mode = _pop_mode
push_mode = _push_mode


def queue_backward_callback(fn: Callable[[], None]) -> None:
    """Run ``fn`` when the backward pass now running ends."""
    torch.autograd.Variable._execution_engine.queue_callback(fn)


def storage_key(t: Any) -> int | None:
    """The data pointer of ``t``'s storage (None for sparse, nested and fake tensors)."""
    try:
        return int(t.untyped_storage().data_ptr())
    except Exception:  # sparse, nested, fake tensors
        return None


def node_op(node_name: str) -> str:
    """``ExpBackward0`` -> ``aten::exp`` (best effort, for nodes made before the sanitizer started)."""
    base = node_name.split("::")[-1]
    for suffix in ("Backward0", "Backward1", "Backward"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    out = []
    for i, ch in enumerate(base):
        if ch.isupper() and i:
            out.append("_")
        out.append(ch.lower())
    return "aten::" + "".join(out)
