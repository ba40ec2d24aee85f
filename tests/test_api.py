"""The Python API as a user meets it: a fresh interpreter, `import imgcls`, and README's code as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def fresh_python(code: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(README.parent)}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_every_public_name_is_the_documented_callable_before_and_after_loading_the_api(tmp_path: Path):
    code = """
import inspect
import imgcls
names = [n for n in imgcls.__all__ if n != "__version__"]
assert {"train", "evaluate", "report", "load", "predict", "export", "serve", "lr_find", "check_data"} <= set(names)
before = {n: getattr(imgcls, n) for n in names}
import imgcls.api, imgcls.reporting, imgcls.inference.export, imgcls.inference.serve  # every submodule a user may touch
for n in names:
    f = getattr(imgcls, n)
    assert callable(f) and not inspect.ismodule(f), n
    assert f is before[n] is getattr(imgcls.api, n), n
    assert "Example:" in (f.__doc__ or ""), n
print("ok", len(names))
"""
    out = fresh_python(code, tmp_path)
    assert out.returncode == 0 and out.stdout.startswith("ok"), out.stderr[-3000:]


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_every_python_block_in_the_readme_runs(tmp_path: Path):
    """In order, each in a fresh interpreter, in one folder: as a reader works through README (the client
    example uses the run the first example exported)."""
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 2, "README's Python examples are missing"
    for i, block in enumerate(blocks):
        out = fresh_python(block, tmp_path)
        assert out.returncode == 0, f"README Python block {i}:\n{block}\n{out.stderr[-3000:]}"
