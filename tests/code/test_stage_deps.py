"""Code: each DVC stage's `deps` in dvc.yaml list exactly the annlab code the stage imports, and
the train stage's `params` exactly what a cell depends on (`annlab.params.cell_keys`)."""

from __future__ import annotations

import re
from pathlib import Path

import grimp
import pytest
import yaml

from annlab.params import cell_keys

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src"
# Files a module needs without importing them: the file MLflow runs to build a logged model.
SHIPPED = {"annlab.serve.pyfunc": ["annlab.serve.pyfunc_entry"]}


def code_closure(module: str, graph: grimp.ImportGraph | None = None) -> set[str]:
    """The annlab source files that `python -m <module>` runs: the module, every annlab module
    it imports, directly or not (imports inside functions included, `TYPE_CHECKING` ones not),
    the files they ship, and the package `__init__.py` of each."""
    graph = graph or grimp.build_graph("annlab", exclude_type_checking_imports=True)
    modules = {module} | graph.find_upstream_modules(module)
    for name, shipped in SHIPPED.items():
        if name in modules:
            for extra in shipped:
                modules |= {extra} | graph.find_upstream_modules(extra)
    packages = {".".join(m.split(".")[:i]) for m in modules for i in range(1, m.count(".") + 1)}
    return {_path(m) for m in modules | packages}


def _path(module: str) -> str:
    base = SRC / module.replace(".", "/")
    path = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
    return path.relative_to(REPO).as_posix()


def stage_code(dvc_yaml: Path) -> dict[str, tuple[str, set[str]]]:
    """Per stage of `dvc_yaml`: the module its `cmd` runs and the annlab files in its `deps`."""
    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    found = {}
    for name, stage in stages.items():
        module = re.search(r"-m (annlab[\w.]*)", stage["cmd"])
        assert module, f"stage {name}: its cmd runs no annlab module"
        found[name] = (module[1], {d for d in stage["deps"] if d.startswith("src/annlab/")})
    return found


def deps_drift(dvc_yaml: Path) -> list[str]:
    """What each stage's deps lack or list in excess, one line per file."""
    graph = grimp.build_graph("annlab", exclude_type_checking_imports=True)
    problems = []
    for name, (module, listed) in stage_code(dvc_yaml).items():
        imported = code_closure(module, graph)
        problems += [f"{name}: imports {path} but does not list it" for path in sorted(imported - listed)]
        problems += [f"{name}: lists {path} but no longer imports it" for path in sorted(listed - imported)]
    return problems


def test_each_stage_lists_exactly_the_code_it_imports() -> None:
    assert deps_drift(REPO / "dvc.yaml") == []


def test_a_missing_or_stale_dep_is_found(tmp_path: Path) -> None:
    text = (REPO / "dvc.yaml").read_text()
    assert "      - src/annlab/train/loop.py\n" in text
    broken = text.replace("      - src/annlab/train/loop.py\n", "", 1)
    broken = broken.replace(
        "      - src/annlab/stages/fetch.py\n",
        "      - src/annlab/stages/fetch.py\n      - src/annlab/report/figures.py\n",
        1,
    )
    (tmp_path / "dvc.yaml").write_text(broken)
    drift = deps_drift(tmp_path / "dvc.yaml")
    assert "train: imports src/annlab/train/loop.py but does not list it" in drift
    assert "fetch: lists src/annlab/report/figures.py but no longer imports it" in drift


def test_the_closure_follows_imports_inside_functions_and_shipped_files() -> None:
    closure = code_closure("annlab.stages.train")
    # The train stage imports Keras' model code inside main(), and logs a model from code.
    assert {
        "src/annlab/train/model.py",
        "src/annlab/serve/pyfunc_entry.py",
        "src/annlab/__init__.py",
    } <= closure
    assert "src/annlab/report/tables.py" not in closure


@pytest.mark.parametrize("model,optimizer", [("${item.model}", "${item.optimizer}")])
def test_a_cells_params_in_dvc_yaml_are_cell_keys(model: str, optimizer: str) -> None:
    train = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["train"]
    keys = [p for p in train["params"] if isinstance(p, str)]
    assert keys == cell_keys(model, optimizer)
    # and its own optimizer's tuning, from the file the validate stage resolves it into
    assert [p for p in train["params"] if isinstance(p, dict)] == [{"data/tuning.yaml": [optimizer]}]
