"""Property tests carry no timing assertion: every ``@given`` test sets ``deadline=None``.

Hypothesis's default deadline (200 ms per example) fails a test whose example merely ran slowly on a
busy machine, which is a flaky timed assertion, not a property. The settings may be given inline
(``@settings(deadline=None, ...)``) or as a module-level ``NAME = settings(deadline=None, ...)``
used as ``@NAME``.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _calls_named(node: ast.expr, name: str) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == name


def _sets_no_deadline(call: ast.Call) -> bool:
    return any(
        k.arg == "deadline" and isinstance(k.value, ast.Constant) and k.value.value is None
        for k in call.keywords
    )


def _missing_deadlines(source: str) -> list[str]:
    """The ``@given`` tests of ``source`` whose settings leave the default deadline."""
    tree = ast.parse(source)
    named: dict[str, bool] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and _calls_named(node.value, "settings"):
            assert isinstance(node.value, ast.Call)
            for target in node.targets:
                if isinstance(target, ast.Name):
                    named[target.id] = _sets_no_deadline(node.value)
    missing: list[str] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        decorators = node.decorator_list
        if not any(_calls_named(d, "given") for d in decorators):
            continue
        covered = any(
            (isinstance(d, ast.Call) and _calls_named(d, "settings") and _sets_no_deadline(d))
            or (isinstance(d, ast.Name) and named.get(d.id, False))
            for d in decorators
        )
        if not covered:
            missing.append(f"{node.name} (line {node.lineno})")
    return missing


def test_every_property_test_sets_deadline_none() -> None:
    found = {
        str(path.relative_to(TESTS)): missing
        for path in sorted(TESTS.rglob("*.py"))
        if (missing := _missing_deadlines(path.read_text()))
    }
    assert found == {}


def test_the_deadline_check_sees_each_spelling() -> None:
    given = "@given(st.integers())\n"
    assert _missing_deadlines(f"{given}def test_a(x): pass") == ["test_a (line 2)"]
    assert _missing_deadlines(f"@settings(max_examples=5)\n{given}def test_b(x): pass") != []
    assert _missing_deadlines(f"@settings(deadline=1000)\n{given}def test_c(x): pass") != []
    assert _missing_deadlines(f"@settings(deadline=None)\n{given}def test_d(x): pass") == []
    fine = "S = settings(deadline=None, max_examples=5)\n"
    assert _missing_deadlines(f"{fine}@S\n{given}def test_e(x): pass") == []
    slow = "S = settings(max_examples=5)\n"
    assert _missing_deadlines(f"{slow}@S\n{given}def test_f(x): pass") != []
    assert _missing_deadlines("def test_g(): pass") == []
