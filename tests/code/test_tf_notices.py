"""TensorFlow's oneDNN notice, printed by each of its native libraries as they load: at most
once a process, and not at all when TF_CPP_MIN_LOG_LEVEL asks for quiet (annlab/__init__.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from annlab import filter_tf_notices
from conftest import REPO

NOTICE = b"I0000 port.cc:153] oneDNN custom operations are on. You may see slightly different results.\n"
ABSL = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
OTHER = b"I0000 cpu_feature_guard.cc:227] This TensorFlow binary is optimized.\n"


def test_each_notice_is_kept_once_or_dropped_when_quiet() -> None:
    printed = ABSL + NOTICE + OTHER + ABSL + NOTICE
    assert filter_tf_notices(printed, quiet=False) == ABSL + NOTICE + OTHER
    assert filter_tf_notices(printed, quiet=True) == OTHER
    assert filter_tf_notices(OTHER, quiet=True) == OTHER


@pytest.mark.parametrize(("level", "most"), [(None, 1), ("0", 1), ("1", 0), ("3", 0)])
def test_importing_tensorflow_after_annlab_prints_the_notice_at_most_once(
    level: str | None, most: int
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = str(REPO / "src")
    if level is not None:
        env["TF_CPP_MIN_LOG_LEVEL"] = level
    code = "import annlab, keras, tensorflow as tf; print(tf.constant(2).numpy() * 21)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0 and proc.stdout.strip() == "42", proc.stderr
    # A CPU where TensorFlow leaves oneDNN off prints none at all.
    assert proc.stderr.count("oneDNN custom operations are on") <= most, proc.stderr


FAKE = """
import os
os.write(2, {printed!r})
"""


@pytest.mark.parametrize(("level", "notices"), [(None, 1), ("2", 0)])
def test_the_loader_passes_other_lines_on_and_each_notice_at_most_once(
    tmp_path: Path, level: str | None, notices: int
) -> None:
    """annlab's loader around a module that prints as TensorFlow does on any CPU with oneDNN."""
    (tmp_path / "fake_tf.py").write_text(FAKE.format(printed=ABSL + NOTICE + OTHER + ABSL + NOTICE))
    code = (
        "import importlib.util, annlab\n"
        f"spec = importlib.util.spec_from_file_location('fake_tf', {str(tmp_path / 'fake_tf.py')!r})\n"
        "spec.loader = annlab._QuietLoader(spec.loader)\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "import os; os.write(2, b'after\\n')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = str(REPO / "src")
    if level is not None:
        env["TF_CPP_MIN_LOG_LEVEL"] = level
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count(NOTICE) == notices and proc.stderr.count(ABSL) == notices
    assert proc.stderr.endswith(OTHER + b"after\n") or proc.stderr == OTHER + b"after\n", proc.stderr
