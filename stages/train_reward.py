"""DVC stage `train_reward`: the same code as `motionpref train-reward`."""

import sys

from motionpref.cli import app

if __name__ == "__main__":
    app(["train-reward", *sys.argv[1:]])
