"""The benchmarks' docstrings say what each measures and how to run it, and dated results live in
``benchmarks/RESULTS.md``, not in the docstrings. Read by ``ast``: nothing is run or timed."""

from __future__ import annotations

import ast
import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(p for p in glob.glob(os.path.join(ROOT, "benchmarks", "*.py"))
                 if os.path.basename(p) != "machine.py")


@pytest.mark.parametrize("path", SCRIPTS, ids=os.path.basename)
def test_a_benchmark_says_what_and_how_and_prints_its_machine(path):
    name = os.path.basename(path)
    tree = ast.parse(open(path).read(), path)
    doc = ast.get_docstring(tree) or ""
    assert f"python benchmarks/{name}" in doc, f"{name}: the docstring shows no command line"
    assert "Not a test" in doc and "benchmarks/RESULTS.md" in doc, name
    # A date or a GFLOP/s figure in a docstring is a result; results go to RESULTS.md with their machine.
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b|\b\d[\d.]*\s*GFLOP/s", doc), f"{name}: dated results in the docstring"
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert "machine" in imported, f"{name}: prints no CPU / GEMM calibration (benchmarks/machine.py)"


def test_every_benchmark_has_a_results_section():
    results = open(os.path.join(ROOT, "benchmarks", "RESULTS.md")).read()
    for path in SCRIPTS:
        assert f"(`{os.path.basename(path)}`)" in results, os.path.basename(path)
