"""Retake docs/mlflow.md's MLflow UI screenshots in a real browser, against `make ui`.

Not part of the project's environment (it needs a browser): run it after `make repro` (the
default, tuned grid) with `make ui` serving, from a separate environment:

    apt-get install chromium            # Debian's Chromium, used as /usr/bin/chromium
    python3 -m venv /tmp/pw && /tmp/pw/bin/pip install playwright    # no `playwright install`
    /tmp/pw/bin/python docs/screenshots.py docs/ [--url http://127.0.0.1:5000]

It writes, into the folder given:

- mlflow_grid_runs.png: the runs table searched for `tags.annlab.role = 'final'`, the grid's
  parent run expanded, with optimizer, activation, learning_rate and test_accuracy as columns;
- mlflow_final_by_cell.png: the same runs grouped by the tag annlab.cell (collapsed), each
  group showing its mean (MLflow's "average" aggregate) test_accuracy;
- mlflow_trials.png: one cell's trials (`tags.annlab.role = 'trial' and tags.annlab.cell =
  'ann-sgd-relu'`) with learning_rate and the last val_accuracy as columns;
- mlflow_compare_parallel.png: the final runs compared in a parallel-coordinates chart of
  activation, learning_rate and optimizer against test_accuracy.

Written against the MLflow 3 UI (3.17); its selectors are the UI's own, so a later UI may move
them. The browser starts from a fresh profile, so no earlier view state (columns, grouping)
carries over.
"""

import argparse
import json
import re
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

from playwright.sync_api import Page, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1400, "height": 800}
FINAL = "tags.annlab.role = 'final'"
TRIALS = "tags.annlab.role = 'trial' and tags.annlab.cell = 'ann-sgd-relu'"
RUN_NAME = "attributes.`Run Name`"


def api(base: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(
        f"{base}/api/2.0/mlflow/{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    return json.load(urllib.request.urlopen(request))


def settle(page: Page, seconds: float = 1.0) -> None:
    """Let the UI finish re-rendering, with the mouse parked where it highlights nothing."""
    page.mouse.move(VIEWPORT["width"] - 100, VIEWPORT["height"] - 20)
    time.sleep(seconds)


def toggle_columns(page: Page, names: list[str]) -> None:
    """Tick (or untick) columns in the runs table's Columns selector, by their exact name."""
    page.get_by_role("button", name="Columns").click()
    time.sleep(1)
    search = page.get_by_placeholder("Search columns")
    for name in names:
        search.fill(name)
        time.sleep(0.7)
        node = page.locator(".du-bois-light-tree-treenode").filter(
            has=page.locator(".du-bois-light-tree-title", has_text=re.compile(f"^{re.escape(name)}$"))
        )
        node.locator(".du-bois-light-tree-checkbox").first.click()
    page.keyboard.press("Escape")
    page.mouse.click(900, 700)  # an empty spot of the table, to close the selector
    time.sleep(0.5)


def widen(page: Page, col_id: str, by: int) -> None:
    """Drag a runs-table column's resize handle `by` pixels to the right."""
    handle = page.locator(f".ag-header-cell[col-id='{col_id}'] .ag-header-cell-resize")
    box = handle.bounding_box()
    x, y = box["x"] + 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    time.sleep(0.2)
    page.mouse.down()
    for step in range(1, 21):
        page.mouse.move(x + by * step / 20, y)
        time.sleep(0.02)
    page.mouse.up()
    time.sleep(0.5)


def search_runs(page: Page, query: str) -> None:
    box = page.get_by_placeholder(re.compile("metrics.rmse"))  # the search box's example query
    box.fill(query)
    box.press("Enter")
    time.sleep(3)


def pick(page: Page, label: str, value: str) -> None:
    """Add an exact option to one of the compare page's Parameters: / Metrics: pickers."""
    page.locator(f"text={label}").locator("xpath=following::input[1]").click()
    page.keyboard.type(value)
    time.sleep(0.7)
    page.locator(f".du-bois-light-select-item-option[title='{value}']").first.click()
    page.keyboard.press("Escape")
    time.sleep(0.5)


def runs_table(page: Page, base: str, exp_id: str, out: Path) -> None:
    query = urllib.parse.urlencode(
        {"searchFilter": FINAL, "orderByKey": "attributes.start_time", "orderByAsc": "true"}
    )
    page.goto(f"{base}/#/experiments/{exp_id}/runs?{query}", wait_until="load")
    page.get_by_text("matching runs").wait_for()
    time.sleep(4)
    close = page.get_by_role("button", name="Close")  # the assistant panel, when it opens
    if close.count():
        close.first.click()
    page.get_by_role("button", name="Toggle sidebar").click()
    time.sleep(0.5)
    search_runs(page, FINAL)  # the URL set it already; typed again, as the docs tell the reader

    # 1. The final runs under the grid's parent, oldest first (the grid's order: sgd first).
    toggle_columns(
        page, ["Dataset", "Source", "Models", "optimizer", "activation", "learning_rate", "test_accuracy"]
    )
    page.locator(".ag-row-level-0 button[data-component-id*=runnamecellrenderer]").first.click()
    time.sleep(1.5)
    widen(page, RUN_NAME, 120)
    widen(page, "metrics.`test_accuracy`", 160)
    settle(page)
    page.screenshot(path=out / "mlflow_grid_runs.png")

    # 2. Group by the tag annlab.cell, with the average as the aggregate, groups collapsed.
    page.get_by_role("button", name="Group by").click()
    time.sleep(0.8)
    page.get_by_role("button", name="Change aggregation function").click()
    time.sleep(0.5)
    average = page.get_by_role("menuitemradio", name="Average")
    if average.count() and average.get_attribute("aria-checked") != "true":
        average.click()
    page.keyboard.press("Escape")  # closes the aggregation submenu only
    time.sleep(0.5)
    if not page.locator("[role=menu] input[placeholder=Search]").count():
        page.get_by_role("button", name="Group by").click()
        time.sleep(0.8)
    page.locator("[role=menu] input[placeholder=Search]").fill("annlab.cell")
    time.sleep(0.7)
    page.locator("[role=menu] [role=menuitemcheckbox]").filter(has_text=re.compile(r"^annlab\.cell$")).click()
    time.sleep(1)
    page.keyboard.press("Escape")
    settle(page, 2)
    groups = page.locator(".ag-row span[title]").filter(has_text=re.compile("^Group: "))
    for name in [t.removeprefix("Group: ") for t in groups.all_inner_texts()]:
        page.locator(".ag-row").filter(has=page.locator(f"span[title='{name}']")).locator(
            "span[role=button]"
        ).first.click()
        time.sleep(0.4)
    settle(page)
    page.screenshot(
        path=out / "mlflow_final_by_cell.png", clip={"x": 0, "y": 0, "width": 1400, "height": 620}
    )

    # 3. One cell's trials. Swap test_accuracy (trials have none) for val_accuracy while the
    # final runs are loaded: the Columns selector only offers the loaded runs' keys.
    toggle_columns(page, ["test_accuracy", "val_accuracy"])
    page.get_by_role("button", name=re.compile("^Group by: ")).locator("span[role=button]").click()
    time.sleep(1)
    search_runs(page, TRIALS)
    trial = page.locator(".ag-row a").filter(has_text=" lr=").first  # a trial's run name
    try:
        trial.wait_for(timeout=10_000)  # the parent stays expanded from step 1
    except PlaywrightTimeoutError:  # if it came back collapsed, expand it
        page.locator(".ag-row-level-0 button[data-component-id*=runnamecellrenderer]").first.click()
        trial.wait_for(timeout=10_000)
    widen(page, "metrics.`val_accuracy`", 80)
    settle(page)
    page.screenshot(path=out / "mlflow_trials.png", clip={"x": 0, "y": 0, "width": 1400, "height": 440})


def compare(page: Page, base: str, exp_id: str, finals: list[str], out: Path) -> None:
    page.goto(
        f"{base}/#/compare-runs?runs={json.dumps(finals)}&experiments={json.dumps([exp_id])}",
        wait_until="load",
    )
    page.get_by_text("Parallel Coordinates Plot").wait_for()
    time.sleep(5)
    page.get_by_role("button", name="Clear All").click()  # the axes MLflow picked by itself
    time.sleep(0.5)
    for param in ["activation", "learning_rate", "optimizer"]:
        pick(page, "Parameters:", param)
    pick(page, "Metrics:", "test_accuracy")
    page.mouse.click(700, 60)
    settle(page, 1.5)
    page.screenshot(
        path=out / "mlflow_compare_parallel.png", clip={"x": 0, "y": 0, "width": 1400, "height": 620}
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="docs", help="folder for the PNGs (default docs)")
    parser.add_argument("--url", default="http://127.0.0.1:5000", help="the MLflow UI's base URL")
    args = parser.parse_args()
    base, out = args.url.rstrip("/"), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    experiments = api(base, "experiments/search", {"max_results": 100})["experiments"]
    exp_id = next(e["experiment_id"] for e in experiments if e["name"] == "annlab")
    runs = api(base, "runs/search", {"experiment_ids": [exp_id], "filter": FINAL, "max_results": 1000})
    finals = [r["info"]["run_id"] for r in runs.get("runs", [])]

    with sync_playwright() as p, tempfile.TemporaryDirectory(prefix="annlab-shots-") as profile:
        context = p.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS, viewport=VIEWPORT
        )
        try:
            page = context.pages[0] if context.pages else context.new_page()
            runs_table(page, base, exp_id, out)
            compare(page, base, exp_id, finals, out)
        finally:
            context.close()


if __name__ == "__main__":
    main()
