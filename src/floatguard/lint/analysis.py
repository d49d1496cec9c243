"""What the rules see: canonical op names, import aliases, value flow and provenance.

A rule never looks at raw names. :meth:`Context.op` turns a call into an
:class:`OpCall` (``op="log"``, ``family="torch"``) whatever the import aliases
(``np``/``numpy``, ``F``/``torch.nn.functional``, ``jnp``, ``tf.math``, ``K``) or the
spelling (``torch.log(x)``, ``x.log()``, ``self.sigmoid(x)`` with
``self.sigmoid = nn.Sigmoid()``). :meth:`Context.value` follows a name back to the
expression last assigned to it in the same function (or module), so
``h = torch.sigmoid(z)`` … ``torch.log(h)`` reads like ``torch.log(torch.sigmoid(z))``.

One module per kind of analysis, each layer a base class of the next:
:mod:`.names` (canonical names, :class:`OpCall`), :mod:`.flow` (bindings, scopes,
definitions, source text), :mod:`.resolve` (imports and op resolution) and
:mod:`.provenance` (where a probability comes from, whether code is differentiated).
"""

from __future__ import annotations

from .flow import Binding, FlowContext, char_col, segment
from .names import (
    _QUAL_TO_OP,
    KNOWN_ROOTS,
    VIEW_FUNCS,
    VIEW_METHODS,
    OpCall,
    const_value,
    dotted_name,
    family_of,
    is_pure,
)
from .provenance import Context
from .resolve import OpContext

__all__ = [
    "KNOWN_ROOTS",
    "VIEW_FUNCS",
    "VIEW_METHODS",
    "_QUAL_TO_OP",
    "Binding",
    "Context",
    "FlowContext",
    "OpCall",
    "OpContext",
    "char_col",
    "const_value",
    "dotted_name",
    "family_of",
    "is_pure",
    "segment",
]
