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


def _filter_line(line: bytes, quiet: bool, seen: set[bytes]) -> bytes:
    """`line` as passed on: b"" for a notice already passed on (or any, when `quiet`)."""
    notice = next((n for n in _NOTICES if n in line), None)
    if notice is None:
        return line
    if quiet or notice in seen:
        return b""
    seen.add(notice)
    return line


def filter_tf_notices(text: bytes, quiet: bool) -> bytes:
    """TensorFlow's import-time stderr with each notice kept once (`quiet`: dropped)."""
    seen: set[bytes] = set()
    return b"".join(_filter_line(line, quiet, seen) for line in text.splitlines(keepends=True))


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
            read_end, write_end = os.pipe()
        except (OSError, ValueError, AttributeError):  # no usable stderr: load as usual
            self.loader.exec_module(module)
            return
        import threading

        def forward() -> None:  # line by line as they come, so a crash loses nothing printed
            seen: set[bytes] = set()
            with os.fdopen(read_end, "rb") as lines:
                for line in lines:
                    kept = _filter_line(line, quiet, seen)
                    while kept:
                        kept = kept[os.write(saved, kept) :]

        reader = threading.Thread(target=forward, name="annlab-tf-stderr", daemon=True)
        reader.start()
        os.dup2(write_end, 2)
        os.close(write_end)
        try:
            self.loader.exec_module(module)
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)  # closes the pipe's last write end: the reader sees its end
            reader.join(timeout=10)
            os.close(saved)


if "tensorflow" not in sys.modules:
    sys.meta_path.insert(0, _QuietTensorFlow())
