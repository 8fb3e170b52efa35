"""DVC stage `train_evaluator`: the same code as `motionpref train-evaluator`."""

import sys

from motionpref.cli import app

if __name__ == "__main__":
    app(["train-evaluator", *sys.argv[1:]])
