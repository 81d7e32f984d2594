"""Retake docs/mlflow.md's MLflow UI screenshots in a real browser, against `make ui`.

Not part of the project's environment (it needs a browser): run it after `make repro` with
`make ui` serving on 127.0.0.1:5000, from a separate environment:

    apt-get install chromium            # Debian's Chromium
    python3 -m venv /tmp/pw && /tmp/pw/bin/pip install playwright
    /tmp/pw/bin/python docs/screenshots.py docs/

It writes mlflow_grid_runs.png (the grid's parent run expanded, with optimizer, activation
and test metrics as columns) and mlflow_compare_parallel.png (the nine cells compared in a
parallel-coordinates chart of optimizer and activation against test accuracy).
"""

import json
import re
import sys
import time
import urllib.request

from playwright.sync_api import sync_playwright

BASE = "http://127.0.0.1:5000"
COLUMNS = ["optimizer", "activation", "test_accuracy", "macro_f1", "test_loss", "best_val_accuracy"]


def api(path: str, body: dict) -> dict:
    request = urllib.request.Request(
        f"{BASE}/api/2.0/mlflow/{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    return json.load(urllib.request.urlopen(request))


def main(out: str) -> None:
    experiments = api("experiments/search", {"max_results": 100})["experiments"]
    exp_id = next(e["experiment_id"] for e in experiments if e["name"] == "annlab")
    runs = api("runs/search", {"experiment_ids": [exp_id], "max_results": 1000})["runs"]
    cells = [
        r["info"]["run_id"] for r in runs if {"key": "annlab.role", "value": "final"} in r["data"]["tags"]
    ]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1500, "height": 700})

        page.goto(f"{BASE}/#/experiments/{exp_id}/runs?workflowType=model_training", wait_until="load")
        time.sleep(5)
        page.get_by_role("button", name="Close").click()  # the assistant panel
        page.get_by_role("button", name="Columns").click()
        time.sleep(1)
        search = page.get_by_placeholder("Search columns")
        for name in ["Dataset", "Source", "Models", *COLUMNS]:  # hide three, show the rest
            search.fill(name)
            time.sleep(0.7)
            node = page.locator(".du-bois-light-tree-treenode").filter(
                has=page.locator(".du-bois-light-tree-title", has_text=re.compile(f"^{name}$"))
            )
            node.locator(".du-bois-light-tree-checkbox").first.click()
        page.keyboard.press("Escape")
        page.mouse.click(900, 500)
        time.sleep(0.5)
        page.mouse.click(318, 264)  # the newest grid run's expander
        time.sleep(1.5)
        page.get_by_role("button", name="Toggle sidebar").click()
        time.sleep(1)
        page.screenshot(path=f"{out}/mlflow_grid_runs.png")

        page.set_viewport_size({"width": 1500, "height": 900})
        page.goto(
            f"{BASE}/#/compare-runs?runs={json.dumps(cells)}&experiments={json.dumps([exp_id])}",
            wait_until="load",
        )
        time.sleep(6)
        for chip in ["model.activation", "accuracy"]:  # the defaults picked; keep the grid's axes
            tag = page.locator("[class*=selection-item], [class*=tag]").filter(
                has_text=re.compile(f"^{chip}$")
            )
            tag.first.locator("[class*=remove], [aria-label], svg").first.click()
            time.sleep(0.5)
        page.locator("text=Metrics:").locator("xpath=following::input[1]").click()
        page.keyboard.type("test_accuracy")
        page.keyboard.press("Enter")
        page.keyboard.press("Escape")
        page.mouse.click(700, 60)
        time.sleep(1.5)
        page.screenshot(
            path=f"{out}/mlflow_compare_parallel.png", clip={"x": 0, "y": 0, "width": 1500, "height": 620}
        )
        browser.close()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs")
