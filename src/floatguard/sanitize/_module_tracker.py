"""Module tracking: the path of the module each op runs in, kept by global module hooks."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from types import FrameType
from typing import Any

import torch

from ._frames import user_location
from ._torch_shims import is_compiling as _is_compiling

__all__ = ["ModuleTracker"]


def _strip_compiled(name: str) -> str:
    """``_orig_mod.fc1`` -> ``fc1`` (the submodule path inside a ``torch.compile``'d module)."""
    if name == "_orig_mod":
        return ""
    return name.removeprefix("_orig_mod.")


def _outermost_parent(module: torch.nn.Module) -> torch.nn.Module | None:
    """The outermost model holding ``module`` as a (nested) submodule, found in the callers' variables.

    ``model.blocks[3].act(x)`` runs ``act`` outside any other module's forward; the model is
    then a local or global of a frame on the stack (or an attribute of one: ``self.model``).
    Asked only when a finding names such a module; None when no caller holds a parent.
    """
    import sys

    module_type = torch.nn.Module
    cands: dict[int, torch.nn.Module] = {}
    spaces: dict[int, dict[str, Any]] = {}
    f: FrameType | None = sys._getframe(1)
    while f is not None:
        spaces.setdefault(id(f.f_globals), f.f_globals)
        loc = f.f_locals
        spaces[id(loc)] = loc
        f = f.f_back
    for ns in spaces.values():
        for v in list(ns.values()):
            tv = type(v)
            if issubclass(tv, module_type):  # type(), not isinstance: no __class__ lookups on proxies
                cands[id(v)] = v
                continue
            try:  # one level into other objects: a trainer's ``self.model``
                attrs = object.__getattribute__(v, "__dict__") if not isinstance(v, type) else None
            except Exception:  # no __dict__ (or a proxy that refuses)
                continue
            if type(attrs) is dict:
                for w in list(attrs.values()):
                    if issubclass(type(w), module_type):
                        cands[id(w)] = w
    best, size = None, 0
    for c in cands.values():
        if c is module:
            continue
        subs = list(c.modules())
        if len(subs) > size and any(m is module for m in subs):
            best, size = c, len(subs)
    return best


class _LazyName(str):
    """A module's name given before knowing whether the module is a submodule of a model (see ``resolve``)."""

    ref: weakref.ref[torch.nn.Module]
    root: weakref.ref[torch.nn.Module]
    resolved: str | None

    def __new__(cls, name: str, module: torch.nn.Module, root: torch.nn.Module) -> _LazyName:
        self = super().__new__(cls, name)
        self.ref, self.root = weakref.ref(module), weakref.ref(root)
        self.resolved = None
        return self


class ModuleTracker:
    """A stack of module paths, kept by global forward pre/post hooks.

    For a module of torch itself (``nn.Linear``, ``nn.TransformerEncoderLayer``) the
    user's source line is the same for every op inside it — the line that called the
    module — so it is found once, at the pre-hook, instead of once per op.
    """

    def __init__(self) -> None:
        self._tls = threading.local()  # one stack per thread: module hooks are global, models may run in threads
        self.names: weakref.WeakKeyDictionary[torch.nn.Module, str] = weakref.WeakKeyDictionary()
        self.params: dict[int, tuple[weakref.ref[Any], str]] = {}
        self._builtin: dict[type, bool] = {}
        self._handles: list[Any] = []
        self.on_root_exit: list[Any] = []
        self.on_root_enter: list[Any] = []
        self.on_compiled_output: list[Any] = []
        self.on_compiled_enter: list[Any] = []  # around a compiled module's call (the mode steps aside)
        self.on_compiled_exit: list[Any] = []
        # every module call, after the stack is pushed / before it is popped (the boundary checks)
        self.on_enter: list[Callable[[torch.nn.Module, Any], None]] = []
        self.on_exit: list[Callable[[torch.nn.Module, Any, dict[str, Any], Any], None]] = []

    def __enter__(self) -> ModuleTracker:
        from torch.nn.modules import module as m

        self._handles = [m.register_module_forward_pre_hook(self._pre),
                         m.register_module_forward_hook(self._post, with_kwargs=True, always_call=True)]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._tls = threading.local()

    @property
    def stack(self) -> list[str]:
        """This thread's module paths, outermost first."""
        tls = self._tls
        try:
            stack: list[str] = tls.stack
        except AttributeError:
            stack = tls.stack = []
            tls.locs = []
        return stack

    @property
    def locs(self) -> list[tuple[str | None, int | None] | None]:
        """This thread's user (file, line) per module on the stack (None: found per op)."""
        self.stack  # noqa: B018 - creates both lists
        locs: list[tuple[str | None, int | None] | None] = self._tls.locs
        return locs

    def register(self, root: torch.nn.Module, *, lazy: bool = False) -> None:
        """Name every submodule and parameter of ``root`` (root itself by its class name).

        ``lazy``: ``root`` was called directly, and may be a submodule of a model never
        called here (``model.blocks[3].act(x)``); its names are :class:`_LazyName` until a
        finding needs one (:meth:`resolve` then names it by its path in that model).
        """
        orig = getattr(root, "_orig_mod", None)  # torch.compile(model): name by the model, not the wrapper
        top = type(orig if isinstance(orig, torch.nn.Module) else root).__name__
        for name, mod in root.named_modules():
            name = _strip_compiled(name)
            if mod not in self.names or name or type(self.names[mod]) is _LazyName:
                self.names[mod] = _LazyName(name or top, mod, root) if lazy else name or top
        for name, p in root.named_parameters():
            self.params[id(p)] = (weakref.ref(p), _strip_compiled(name))

    def resolve(self, name: str | None) -> str | None:
        """The module path to report for ``name``: a directly called submodule by its path in its model."""
        if type(name) is not _LazyName:
            return name
        if name.resolved is None:
            mod, root = name.ref(), name.root()
            top = _outermost_parent(root) if root is not None else None
            if top is not None:
                self.register(top)
            elif root is not None:
                self.register(root)  # a root after all: plain names from now on
            name.resolved = str(self.names.get(mod, name)) if mod is not None else str(name)
        return name.resolved

    def param_name(self, p: Any) -> str | None:
        hit = self.params.get(id(p))
        if hit is not None and hit[0]() is p:
            return hit[1]
        return None

    def _pre(self, module: torch.nn.Module, args: Any) -> None:
        if _is_compiling():  # traced by torch.compile: no hook in the graph (its region is checked at its outputs)
            return
        stack, locs = self.stack, self._tls.locs
        if not stack:
            for cb in self.on_root_enter:
                cb()
        name = self.names.get(module)
        if name is None:
            if stack:
                name = f"{stack[-1]}.<{type(module).__name__}>"
                self.names[module] = name
            else:
                self.register(module, lazy=True)
                name = self.names[module]
        cls = type(module)
        builtin = self._builtin.get(cls)
        if builtin is None:
            builtin = self._builtin[cls] = cls.__module__.startswith("torch.")
        loc = None
        if builtin:
            parent = locs[-1] if locs else None
            loc = parent if parent is not None else user_location(1)
        stack.append(name)
        locs.append(loc)
        if self.on_compiled_enter and cls.__name__ == "OptimizedModule":
            for cb in self.on_compiled_enter:
                cb()
        for enter in self.on_enter:
            enter(module, args)

    def _post(self, module: torch.nn.Module, args: Any, *rest: Any) -> None:
        """``(module, args, kwargs, output)``; torch passes ``(module, args, None)`` when the forward raised."""
        if _is_compiling():
            return
        kwargs, output = rest if len(rest) == 2 else ({}, None)
        try:
            for leave in self.on_exit:
                leave(module, args, kwargs, output)
        finally:
            self._pop(module, args, output)

    def _pop(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if self.on_compiled_exit and type(module).__name__ == "OptimizedModule":
            for cb in self.on_compiled_exit:
                cb()
        if self.on_compiled_output and type(module).__name__ == "OptimizedModule":
            for cb in self.on_compiled_output:
                cb(f"torch.compile({type(getattr(module, '_orig_mod', module)).__name__})", args, output)
        stack = self.stack
        if stack:
            stack.pop()
            self._tls.locs.pop()
            if not stack:
                for cb in self.on_root_exit:
                    cb(output)

    @property
    def current(self) -> str | None:
        stack = self.stack
        return stack[-1] if stack else None

    def here(self) -> tuple[str | None, str | None, int | None]:
        """(module, file, line) of the op being run: ``current`` and ``location()`` in one look at the stack."""
        try:
            stack, locs = self._tls.stack, self._tls.locs
        except AttributeError:
            return None, *user_location(2)
        if not stack:
            return None, *user_location(2)
        loc = locs[-1]
        if loc is None:
            return stack[-1], *user_location(2)
        return stack[-1], loc[0], loc[1]

    def location(self) -> tuple[str | None, int | None]:
        """The user's (file, line) of the op being run (called from ``__torch_dispatch__``)."""
        locs = self.locs
        loc = locs[-1] if locs else None
        return loc if loc is not None else user_location(2)
