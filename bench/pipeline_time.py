"""Time the README's main command from a fresh clone: `bash scripts/setup.sh`, then `dvc repro`, stage by stage;
then the seed replicates' `dvc repro replicates/dvc.yaml`, which the default leaves out.

    python bench/pipeline_time.py [--rev HEAD] [--workdir DIR] [--out JSON] [--summarise-only | --replicates-only]

Clones this repository at ``--rev`` into ``DIR/repo`` (a fresh clone: no DVC cache, no MLflow store), runs the
setup and ``dvc repro`` there, then ``dvc repro replicates/dvc.yaml``, stamping each line DVC prints
(``DIR/repro.log``, ``DIR/replicates.log``), and writes ``reports/bench/pipeline_time.json``: the commit, the CPU,
setup, repro and replicates seconds, each stage's seconds from its start to the next one's (process start, imports
and DVC's hashing included), the stages DVC skipped, every committed file the two runs changed with the keys
that differ inside it, and each rewritten evaluation's metrics against the committed ones. On the CPU type that
made ``dvc.lock`` every output reproduces bit for bit, so DVC skips each stage whose outputs are all committed
files (the evaluations and win rates) and the files that differ hold timings only; on another CPU type every stage
runs and ``metric_drift`` says how far the metrics moved.
``--summarise-only`` writes the JSON from an earlier run's ``DIR``; ``--replicates-only`` runs the replicates in
an earlier run's ``DIR`` (one made before this script ran them) and writes it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from motionpref.io import write_json
from motionpref.pipeline import REPLICATES
from motionpref.tracking import cpu_type, git_commit

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "reports" / "bench" / "pipeline_time.json"
STAMP = "%H:%M:%S"
RUNNING = re.compile(r"^(\d\d:\d\d:\d\d) Running stage '([^']+)'")
SKIPPED = re.compile(r"^\d\d:\d\d:\d\d Stage '([^']+)' didn't change, skipping")
LINE = re.compile(r"^(\d\d:\d\d:\d\d) ")


def _env(repo: Path) -> dict[str, str]:
    venv = repo / ".venv" / "bin"
    return {**os.environ, "PATH": f"{venv}:{os.environ['PATH']}", "VIRTUAL_ENV": str(venv.parent)}


def _stamped(cmd: list[str], repo: Path, log_path: Path) -> int:
    """Run ``cmd`` in ``repo``'s environment, each line it prints stamped into ``log_path``; its exit status."""
    log = log_path.open("w")
    proc = subprocess.Popen(cmd, cwd=repo, env=_env(repo), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with proc, log:
        assert proc.stdout is not None
        for line in proc.stdout:  # DVC stamps nothing itself: the stage times come from these stamps
            log.write(f"{dt.datetime.now().strftime(STAMP)} {line}")
            log.flush()
    return proc.returncode


def run(rev: str, workdir: Path) -> None:
    repo = workdir / "repo"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "checkout", "-q", rev], check=True)
    times = {"start": time.time()}
    subprocess.run(["bash", "scripts/setup.sh"], cwd=repo, check=True)
    times["setup_done"] = time.time()
    returncode = _stamped(["dvc", "repro"], repo, workdir / "repro.log")
    times["repro_done"] = time.time()
    (workdir / "times.json").write_text(json.dumps({**times, "returncode": returncode}))
    if returncode:
        raise SystemExit(f"dvc repro failed ({returncode}): see {workdir / 'repro.log'}")
    run_replicates(workdir)


def run_replicates(workdir: Path) -> None:
    times = json.loads((workdir / "times.json").read_text())
    start = time.time()
    returncode = _stamped(["dvc", "repro", str(REPLICATES)], workdir / "repo", workdir / "replicates.log")
    times.update(replicates_start=start, replicates_done=time.time(), replicates_returncode=returncode)
    (workdir / "times.json").write_text(json.dumps(times))
    if returncode:
        raise SystemExit(f"dvc repro {REPLICATES} failed ({returncode}): see {workdir / 'replicates.log'}")


def stage_times(lines: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """Each stage DVC ran with the minutes from its start to the next stage's start (the last: to the log's last
    stamped line), and the stages it skipped. Stamps are wall-clock times of day; a run past midnight wraps."""
    starts = [(m.group(2), m.group(1)) for m in map(RUNNING.match, lines) if m]
    skipped = [m.group(1) for m in map(SKIPPED.match, lines) if m]
    last = next((m.group(1) for m in map(LINE.match, reversed(lines)) if m), None)
    ends = [t for _, t in starts[1:]] + [last]
    rows = []
    for (stage, start), end in zip(starts, ends, strict=True):
        seconds = (dt.datetime.strptime(end, STAMP) - dt.datetime.strptime(start, STAMP)).total_seconds()
        rows.append({"stage": stage, "seconds": seconds % 86400})
    return rows, skipped


def _leaves(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _leaves(v, f"{path}[{i}]")
    else:
        yield path, value


def changed_files(repo: Path) -> dict[str, list[str] | None]:
    """Each committed file the run changed: for JSON the keys whose values differ, otherwise None."""
    names = subprocess.run(
        ["git", "diff", "--name-only"], cwd=repo, check=True, capture_output=True, text=True
    ).stdout.split()
    out: dict[str, list[str] | None] = {}
    for name in names:
        if not name.endswith(".json"):
            out[name] = None
            continue
        old = dict(_leaves(_committed_json(repo, name)))
        new = dict(_leaves(json.loads((repo / name).read_text())))
        out[name] = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    return out


def _committed_json(repo: Path, name: str) -> Any:
    show = subprocess.run(["git", "show", f"HEAD:{name}"], cwd=repo, check=True, capture_output=True, text=True)
    return json.loads(show.stdout)


def metric_drift(repo: Path, changed: dict[str, list[str] | None]) -> dict[str, dict[str, dict[str, Any]]]:
    """For each evaluation the run rewrote, each first-sample metric's committed and new mean with both 95%
    intervals: on another CPU type every model retrains to other bits, and this says how far that moves a metric
    against the evaluation's own interval (which holds sampling noise, not training's)."""
    drift: dict[str, dict[str, dict[str, Any]]] = {}
    for name, keys in changed.items():
        if not name.startswith("reports/metrics/") or not keys:
            continue
        old, new = _committed_json(repo, name)["metrics"], json.loads((repo / name).read_text())["metrics"]
        drift[Path(name).stem] = {
            metric: {
                "committed": old[metric]["mean"],
                "now": new[metric]["mean"],
                "ci95": [old[metric]["ci95"], new[metric]["ci95"]],
                "intervals_overlap": abs(new[metric]["mean"] - old[metric]["mean"])
                <= old[metric]["ci95"] + new[metric]["ci95"],
            }
            for metric in sorted(old)
            if isinstance(old[metric], dict) and isinstance(new.get(metric), dict)
        }
    return drift


def summarise(workdir: Path) -> dict[str, Any]:
    repo = workdir / "repo"
    times = json.loads((workdir / "times.json").read_text())
    rows, skipped = stage_times((workdir / "repro.log").read_text().splitlines())
    changed = changed_files(repo)
    replicates = {}
    if "replicates_done" in times:
        replicate_rows, replicates_skipped = stage_times((workdir / "replicates.log").read_text().splitlines())
        replicates = {
            "replicates_seconds": round(times["replicates_done"] - times["replicates_start"], 1),
            "replicates_returncode": times["replicates_returncode"],
            "replicates_stages_skipped": replicates_skipped,
            "replicates_stages": replicate_rows,
        }
    return {
        "commit": git_commit(repo),
        "cpu": cpu_type(),
        "cpus": os.cpu_count(),
        "setup_seconds": round(times["setup_done"] - times["start"], 1),
        "repro_seconds": round(times["repro_done"] - times["setup_done"], 1),
        "repro_returncode": times["returncode"],
        "stages_run": len(rows),
        "stages_skipped": skipped,
        "stages": rows,
        **replicates,
        "changed_files": changed,
        "metric_drift": metric_drift(repo, changed),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rev", default="HEAD")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=OUT, help="another CPU type's run goes beside the default file")
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--summarise-only", action="store_true")
    only.add_argument("--replicates-only", action="store_true")
    args = parser.parse_args()
    if (args.summarise_only or args.replicates_only) and args.workdir is None:
        parser.error("--summarise-only and --replicates-only need the --workdir of an earlier run")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="pipeline_time_"))
    if args.replicates_only:
        run_replicates(workdir)
    elif not args.summarise_only:
        workdir.mkdir(parents=True, exist_ok=True)
        run(args.rev, workdir)
    result = summarise(workdir)
    write_json(args.out, result)
    print(
        f"{args.out}: setup {result['setup_seconds']:.0f} s, dvc repro {result['repro_seconds'] / 60:.1f} min, "
        f"{result['stages_run']} stages run, {len(result['stages_skipped'])} skipped"
        + (f"; replicates {result['replicates_seconds'] / 60:.1f} min" if "replicates_seconds" in result else "")
    )


if __name__ == "__main__":
    main()
