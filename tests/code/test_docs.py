"""The documentation's links and images point to files that exist, and the `make` targets it
names are the Makefile's; the pipeline refuses, in one line, to run outside its environment."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")  # [text](target "title")
HTML_SRC = re.compile(r"<(?:img|a)\b[^>]*\b(?:src|href)=\"([^\"]+)\"", re.IGNORECASE)
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`([^`\n]+)`")
MAKE_CALL = re.compile(r"(?:^|[\s;&|(])make\s+((?:[A-Z_]+=\S*\s+)*)([a-z][a-z0-9-]*)")


def broken_links(page: Path) -> list[str]:
    """The relative links and images of a Markdown page whose file does not exist."""
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    broken = []
    for target in [*LINK.findall(text), *HTML_SRC.findall(text)]:
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) or target.startswith("#"):
            continue  # http(s), mailto: not ours to check here; an anchor on the same page
        path = target.split("#", 1)[0].split("?", 1)[0]
        if not (page.parent / path).exists():
            broken.append(target)
    return broken


def make_targets(makefile: Path) -> set[str]:
    """The targets a Makefile defines."""
    text = makefile.read_text(encoding="utf-8")
    return set(re.findall(r"^([a-z][a-z0-9-]*)\s*:(?!=)", text, re.MULTILINE))


def named_make_targets(page: Path) -> set[str]:
    """The targets a page names as `make <target>` in its code (spans and fenced blocks)."""
    text = page.read_text(encoding="utf-8")
    code = [m.group(0) for m in FENCE.finditer(text)]
    code += CODE_SPAN.findall(FENCE.sub("", text))
    return {m.group(2) for snippet in code for m in MAKE_CALL.finditer(snippet)}


def test_the_pages_exist_and_the_readme_is_short() -> None:
    names = {page.name for page in PAGES}
    for page in ("guide", "mlflow", "team", "reliability", "performance", "development"):
        assert f"{page}.md" in names
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200
    first_screen = "\n".join(lines[:40])
    assert "make repro" in first_screen and "make test" in first_screen


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_relative_link_and_image_exists(page: Path) -> None:
    assert broken_links(page) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_make_target_named_exists(page: Path) -> None:
    assert named_make_targets(page) <= make_targets(REPO / "Makefile")


def test_the_checks_catch_a_broken_link_and_an_unknown_target(tmp_path: Path) -> None:
    (tmp_path / "there.png").write_bytes(b"")
    (tmp_path / "sub").mkdir()
    page = tmp_path / "page.md"
    page.write_text(
        "See [ok](there.png), [anchor](#top), [web](https://example.org/x), [dir](sub/#part),\n"
        '![gone](figures/missing.png), [gone too](nothing.md#part) and <img src="lost.png">.\n'
        "```\nls [not a link](missing-in-code.md)\nmake repro JOBS=1 && make nope\n```\n"
        "Run `PORT=1 make ui` or `make  nothing-here`; to make it fast, read on.\n",
        encoding="utf-8",
    )
    assert broken_links(page) == ["figures/missing.png", "nothing.md#part", "lost.png"]
    assert named_make_targets(page) == {"repro", "nope", "ui", "nothing-here"}
    assert make_targets(REPO / "Makefile") >= {"help", "repro", "test", "test-fast", "ui"}


def test_a_stage_outside_the_projects_environment_stops_with_one_line(tmp_path: Path) -> None:
    """`python -S` finds no site-packages: the interpreter a bare `dvc repro` may find on PATH."""
    proc = subprocess.run(
        [sys.executable, "-S", "-m", "annlab.stages.validate", "--params", str(REPO / "params.yaml")],
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "tensorflow" in lines[0] and "make repro" in lines[0] and "source .venv/bin/activate" in lines[0]
    assert list(tmp_path.iterdir()) == []


# Example outputs in the docs are marked `<!-- example: <source> -->` … `<!-- /example -->`:
# `reports/...` (every number in them appears in that committed report) or `rendered` (the
# block holds what the report's own code writes, rendered here). They cannot go stale.
EXAMPLE = re.compile(r"<!-- example: (\S+) -->(.*?)<!-- /example -->", re.DOTALL)
NUMBER = re.compile(r"(?<![\w.])\d+\.\d+(?![\w.])")


def example_errors(page: Path, rendered: list[str]) -> list[str]:
    """Each number of an example block its source lacks, and each rendered line a rendered block
    lacks, as `page: <source>: <what>`."""
    errors = []
    for source, block in EXAMPLE.findall(page.read_text(encoding="utf-8")):
        text = " ".join(block.replace(">", " ").split())
        if source == "rendered":
            truth = " ".join(rendered)
            if not any(line in text for line in rendered):
                errors.append(f"{page.name}: rendered: {text[:80]!r} is none of {rendered}")
        else:
            truth = (REPO / source).read_text(encoding="utf-8")
        known = set(NUMBER.findall(truth))
        errors += [f"{page.name}: {source}: {n}" for n in NUMBER.findall(text) if n not in known]
    return errors


def rendered_examples() -> list[str]:
    """What the report's code writes for the docs' hypothetical examples: a factor where one
    level beats another, and a one-seed cell that diverged in its first epoch."""
    import pandas as pd

    from annlab.report import confidence as conf
    from annlab.report import markdown as md
    from annlab.report.tables import fmt_value

    beats = conf.Comparison(conf.Interval(0.092, 0.071, 0.113, 5, 0.017), 0.0002, 5)
    effect = conf.Effect({}, {("adam", "sgd"): (beats, 0.001)})
    sentence = md.effect_sentence("optimizer", effect)
    clause = sentence.split(": ", 1)[1].rstrip(".")
    diverged = pd.Series({"seeds": 1, "diverged": 1, "diverged_epoch": 1, "test_accuracy": float("nan")})
    return [clause, fmt_value(diverged, "test_accuracy", 4)]


def test_the_docs_examples_are_what_the_reports_and_the_code_say() -> None:
    blocks = {page.name: len(EXAMPLE.findall(page.read_text(encoding="utf-8"))) for page in PAGES}
    assert blocks["README.md"] >= 2 and blocks["guide.md"] >= 4, blocks
    rendered = rendered_examples()
    assert rendered == [
        "adam beats sgd by 9.20 [7.10, 11.30] points (adjusted p = 0.001)",
        "diverged (epoch 1)",
    ]
    assert [e for page in PAGES for e in example_errors(page, rendered)] == []


def test_an_example_number_changed_by_hand_is_caught(tmp_path: Path) -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    page = tmp_path / "README.md"
    page.write_text(text.replace("0.9683 [0.9546", "0.9691 [0.9546", 1), encoding="utf-8")
    assert example_errors(page, rendered_examples()) == ["README.md: reports/comparison.md: 0.9691"]
    guide = (REPO / "docs/guide.md").read_text(encoding="utf-8")
    page.write_text(guide.replace("by 9.20 [7.10", "by 9.30 [7.10", 1), encoding="utf-8")
    assert example_errors(page, rendered_examples())[-1].endswith("rendered: 9.30")


def test_the_allowed_activations_are_listed_where_users_look() -> None:
    from typing import get_args

    from annlab.params import Activation

    for path in ("README.md", "docs/guide.md", "params.yaml"):
        text = (REPO / path).read_text(encoding="utf-8")
        assert [a for a in get_args(Activation) if not re.search(rf"\b{a}\b", text)] == [], path
