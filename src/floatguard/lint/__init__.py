"""floatguard's static checker: unstable numerics in user code, found before it runs, fixed with proof.

Use it as ``floatguard lint PATH...`` (or ``python -m floatguard.lint``), as a
pre-commit hook or a flake8 plugin, or from Python::

    from floatguard.lint import lint_source
    for event in lint_source("import torch\\ny = torch.log(torch.sigmoid(z))\\n"):
        print(event.location, event.code, event.message)

Rules live in ``floatguard/lint/rules/``, one module per rule; each rule's
docstring is its documentation (``floatguard lint --explain FG101``).
"""

from .engine import FileResult, fix_source, lint_file, lint_paths, lint_source
from .rule import Finding, Fix, Rule
from .rules import all_rules, by_code

__all__ = ["FileResult", "Finding", "Fix", "Rule", "all_rules", "by_code", "fix_source", "lint_file", "lint_paths",
           "lint_source"]
