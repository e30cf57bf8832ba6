"""The README's Python examples run as written (so the quick start stays true)."""
import re

import pytest

from conftest import HAS_SOURCE_TREE, REPO_ROOT, SOURCE_TREE_SKIP_REASON

if not HAS_SOURCE_TREE:
    pytest.skip(SOURCE_TREE_SKIP_REASON, allow_module_level=True)

README = REPO_ROOT / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_has_python_examples():
    assert len(BLOCKS) >= 2


def test_readme_python_examples_run_in_order():
    namespace = {"__name__": "readme"}
    for block in BLOCKS:  # later blocks use names the earlier ones define (model, x, y)
        exec(compile(block, str(README), "exec"), namespace)
    assert "FALinear" in namespace and "model" in namespace
