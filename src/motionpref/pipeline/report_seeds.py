"""Stage report_seeds: the tables of reports/comparison.md again, each replicated model (``report.replicated`` and
each table's) also against its baseline across its ``report.seeds`` seed replicates (``finetune@<model>_s<k>``):
one mean paired difference per seed and their Student t interval, into reports/comparison_seeds.{json,md}. Its
stage is in replicates/dvc.yaml with the replicates it reads, outside the default `dvc repro`.
"""

from __future__ import annotations

from typing import Any

from motionpref.config import Params
from motionpref.pipeline import StageContext
from motionpref.pipeline.report import write_comparison


def run(params: Params, ctx: StageContext) -> dict[str, Any]:
    return write_comparison(params.report, ctx, seeds=params.report.seeds, stem="comparison_seeds")


if __name__ == "__main__":
    from motionpref.pipeline import main

    main()
