"""The MLflow UI's run comparison on a suite's store, driven as a researcher does: search, select, Compare."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from label_app_fixtures import chromium, free_port, wait_until_up
from mlflow import MlflowClient
from PIL import Image
from playwright.sync_api import expect
from suite_fixtures import fill_store, make_project

# What the README tells users to type in the runs page's search box to find a suite's DPO evaluations.
SUITE_FILTER = "tags.`motionpref.suite` = 's' and tags.`motionpref.stage` LIKE 'evaluate@dpo%'"
SCREENSHOT_ENV = "MOTIONPREF_MLFLOW_SCREENSHOT"
# Wide enough that the compare view's virtualized metrics grid renders every run's column, tall enough that
# the screenshot holds the run details, metrics and tags (the page scrolls inside a pane, not the document).
VIEWPORT = {"width": 1920, "height": 2100}
TIMEOUT_MS = 60_000


@contextmanager
def mlflow_ui(db: Path, cwd: Path) -> Iterator[str]:
    """`mlflow ui` on the SQLite store ``db`` in its own process group; yields its base URL."""
    port = free_port()
    # the job runners (huey consumers) serve GenAI features only and cost a process per queue on 2 cores
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    cmd = [Path(sys.executable).parent / "mlflow", "ui", "--backend-store-uri", f"sqlite:///{db}"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with open(cwd / "mlflow-ui.log", "wb") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{url}/health", timeout=60.0, proc=proc)
        yield url
    finally:
        # the CLI forks the uvicorn server, so the whole group goes; nothing in a read-only UI needs a clean exit
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@pytest.mark.slow
def test_compare_view_shows_a_suites_filtered_runs_and_their_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the runs' artifacts go under the working directory's mlruns/
    project = make_project(tmp_path)
    runs = fill_store(project)
    db = project / "mlflow.db"
    client = MlflowClient(f"sqlite:///{db}")
    experiment_id = client.get_experiment_by_name(runs[0].params.experiment).experiment_id
    selected = {r.info.run_id: r for r in client.search_runs([experiment_id], SUITE_FILTER)}
    assert len(selected) == 6  # two variants, each the model at three seeds
    (outsider,) = client.search_runs([experiment_id], "tags.`motionpref.stage` = 'evaluate@sft'")

    with mlflow_ui(db, tmp_path) as url, chromium() as browser:
        page = browser.new_page(viewport=VIEWPORT)
        page.set_default_timeout(TIMEOUT_MS)
        # the experiment's bare URL opens MLflow 3's GenAI overview; the runs table is its own route
        page.goto(f"{url}/#/experiments/{experiment_id}/runs")
        # the assistant pane takes a third of the width, which the compare view's grid then virtualizes away
        page.get_by_role("button", name="Close").click()
        search = page.get_by_test_id("search-box")  # MLflow's own test id: the combobox has no accessible name
        search.press_sequentially(SUITE_FILTER)
        search.press("Enter")
        expect(page.get_by_text(f"{len(selected)} matching runs")).to_be_visible(timeout=TIMEOUT_MS)
        page.get_by_role("checkbox", name="Select all runs").check()
        page.get_by_role("button", name="Compare", exact=True).click()

        expect(page.get_by_role("heading", name=f"Comparing {len(selected)} Runs from 1 Experiment")).to_be_visible(
            timeout=TIMEOUT_MS
        )
        run_ids = page.get_by_role("row").filter(has_text="Run ID:").get_by_role("link")
        expect(run_ids).to_have_count(len(selected), timeout=TIMEOUT_MS)
        columns = run_ids.all_inner_texts()
        assert sorted(columns) == sorted(selected)
        run_names = page.get_by_role("row").filter(has_text="Run Name:").get_by_role("cell")
        expect(run_names).to_have_text([selected[i].info.run_name for i in columns], timeout=TIMEOUT_MS)

        # the metrics table is two grids side by side: the metric names, and one column of values per run
        names = page.get_by_role("grid").filter(has_text="r_precision_top1.mean").get_by_role("link")
        values = page.get_by_role("grid").filter(has_not_text="r_precision_top1.mean")
        logged = sorted(next(iter(selected.values())).data.metrics)
        expect(names).to_have_text(logged, timeout=TIMEOUT_MS)
        cells = values.get_by_text(re.compile(r"^[-+.\de]+$"))
        expect(cells).to_have_count(len(logged) * len(columns), timeout=TIMEOUT_MS)
        shown = [float(t) for t in cells.all_inner_texts()]
        for row, metric in enumerate(logged):
            for col, run_id in enumerate(columns):
                # the UI rounds to three decimals
                assert shown[row * len(columns) + col] == pytest.approx(
                    selected[run_id].data.metrics[metric], abs=5e-4 + 1e-9
                ), (metric, run_id)

        expect(page.get_by_text(outsider.info.run_id)).to_have_count(0)
        expect(page.get_by_text(outsider.info.run_name)).to_have_count(0)

        shot = tmp_path / "mlflow_compare.png"
        page.screenshot(path=shot, full_page=True)
    if os.environ.get(SCREENSHOT_ENV):
        shutil.copy(shot, os.environ[SCREENSHOT_ENV])
    assert shot.stat().st_size > 10_000
    assert Image.open(shot).size[0] == VIEWPORT["width"]
