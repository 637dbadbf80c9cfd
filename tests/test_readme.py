"""The README's Python snippets run as they are written (those that need CUDA, only
where there is a GPU), and its commands exist."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_snippets():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("n", range(len(BLOCKS)))
def test_readme_snippet_runs(n, tmp_path):
    code = BLOCKS[n]
    if "cuda" in code and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    # A process of its own: a snippet sets environment variables before importing triton.
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          cwd=tmp_path)
    assert done.returncode == 0, f"README snippet {n} failed:\n{code}\n--- stderr:\n{done.stderr[-3000:]}"
    assert done.stdout.strip(), f"README snippet {n} printed nothing"
