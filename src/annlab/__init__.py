"""annlab: a reproducible experiment pipeline for neural-network classifiers."""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
from typing import Any

__version__ = "0.1.0"

# TensorFlow prints its oneDNN notice once per native library that loads (twice a process), before
# its logging is set up, so TF_CPP_MIN_LOG_LEVEL cannot hide it. annlab imports TensorFlow with the
# process's stderr caught and passes it on with the notice (and the line about logging that
# precedes it) at most once, and not at all when TF_CPP_MIN_LOG_LEVEL is 1 or more.
_NOTICES = (b"oneDNN custom operations are on", b"All log messages before absl::InitializeLog()")


def filter_tf_notices(text: bytes, quiet: bool) -> bytes:
    """TensorFlow's import-time stderr with each notice kept once (`quiet`: dropped)."""
    seen: set[bytes] = set()
    kept = []
    for line in text.splitlines(keepends=True):
        notice = next((n for n in _NOTICES if n in line), None)
        if notice is not None:
            if quiet or notice in seen:
                continue
            seen.add(notice)
        kept.append(line)
    return b"".join(kept)


class _QuietTensorFlow(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` as the other finders do, and has it loaded with its notices filtered."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "tensorflow":
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None:  # a probe (importlib.util.find_spec) imports nothing
                    spec.loader = _QuietLoader(spec.loader)
                return spec
        return None


class _QuietLoader(importlib.abc.Loader):
    """TensorFlow's own loader, run with the process's stderr caught and passed on filtered."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        module.__loader__ = module.__spec__.loader = self.loader
        quiet = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0").strip() not in ("", "0")
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError):  # no usable stderr: load as usual
            self.loader.exec_module(module)
            return
        import tempfile

        with tempfile.TemporaryFile() as caught:
            os.dup2(caught.fileno(), 2)
            try:
                self.loader.exec_module(module)
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
                caught.seek(0)
                os.write(2, filter_tf_notices(caught.read(), quiet))


if "tensorflow" not in sys.modules:
    sys.meta_path.insert(0, _QuietTensorFlow())
