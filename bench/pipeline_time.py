"""Time the README's main command from a fresh clone: `bash scripts/setup.sh`, then `dvc repro`, stage by stage.

    python bench/pipeline_time.py [--rev HEAD] [--workdir DIR] [--summarise-only]

Clones this repository at ``--rev`` into ``DIR/repo`` (a fresh clone: no DVC cache, no MLflow store), runs the
setup and ``dvc repro`` there, stamping each line DVC prints (``DIR/repro.log``), and writes
``reports/bench/pipeline_time.json``: the commit, the CPU, setup and repro seconds, each stage's seconds from its
start to the next one's (process start, imports and DVC's hashing included), the stages DVC skipped, and every
committed file the run changed with the keys that differ inside it. On the CPU type that made ``dvc.lock`` every
output reproduces bit for bit, so DVC skips each stage whose outputs are all committed files (the evaluations and
win rates) and the files that differ hold timings only; on another CPU type every stage runs.
``--summarise-only`` writes the JSON from an earlier run's ``DIR``.
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
from motionpref.tracking import cpu_type, git_commit

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "reports" / "bench" / "pipeline_time.json"
STAMP = "%H:%M:%S"
RUNNING = re.compile(r"^(\d\d:\d\d:\d\d) Running stage '([^']+)'")
SKIPPED = re.compile(r"^\d\d:\d\d:\d\d Stage '([^']+)' didn't change, skipping")
LINE = re.compile(r"^(\d\d:\d\d:\d\d) ")


def run(rev: str, workdir: Path) -> None:
    repo = workdir / "repo"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "checkout", "-q", rev], check=True)
    times = {"start": time.time()}
    subprocess.run(["bash", "scripts/setup.sh"], cwd=repo, check=True)
    times["setup_done"] = time.time()
    venv = repo / ".venv" / "bin"
    env = {**os.environ, "PATH": f"{venv}:{os.environ['PATH']}", "VIRTUAL_ENV": str(venv.parent)}
    with (
        subprocess.Popen(
            ["dvc", "repro"], cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as proc,
        (workdir / "repro.log").open("w") as log,
    ):
        assert proc.stdout is not None
        for line in proc.stdout:  # DVC stamps nothing itself: the stage times come from these stamps
            log.write(f"{dt.datetime.now().strftime(STAMP)} {line}")
            log.flush()
    times["repro_done"] = time.time()
    (workdir / "times.json").write_text(json.dumps({**times, "returncode": proc.returncode}))
    if proc.returncode:
        raise SystemExit(f"dvc repro failed ({proc.returncode}): see {workdir / 'repro.log'}")


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
        old = dict(
            _leaves(
                json.loads(
                    subprocess.run(
                        ["git", "show", f"HEAD:{name}"], cwd=repo, check=True, capture_output=True, text=True
                    ).stdout
                )
            )
        )
        new = dict(_leaves(json.loads((repo / name).read_text())))
        out[name] = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    return out


def summarise(workdir: Path) -> dict[str, Any]:
    repo = workdir / "repo"
    times = json.loads((workdir / "times.json").read_text())
    rows, skipped = stage_times((workdir / "repro.log").read_text().splitlines())
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
        "changed_files": changed_files(repo),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rev", default="HEAD")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--summarise-only", action="store_true")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="pipeline_time_"))
    if not args.summarise_only:
        workdir.mkdir(parents=True, exist_ok=True)
        run(args.rev, workdir)
    result = summarise(workdir)
    write_json(OUT, result)
    print(
        f"{OUT}: setup {result['setup_seconds']:.0f} s, dvc repro {result['repro_seconds'] / 60:.1f} min, "
        f"{result['stages_run']} stages run, {len(result['stages_skipped'])} skipped"
    )


if __name__ == "__main__":
    main()
