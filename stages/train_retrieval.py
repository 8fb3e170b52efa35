"""DVC stage `train_retrieval`: the same code as `motionpref train-retrieval`."""

import sys

from motionpref.cli import app

if __name__ == "__main__":
    app(["train-retrieval", *sys.argv[1:]])
