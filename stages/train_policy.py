"""DVC stage `train_policy`: the same code as `motionpref train-policy`."""

import sys

from motionpref.cli import app

if __name__ == "__main__":
    app(["train-policy", *sys.argv[1:]])
