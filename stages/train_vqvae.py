"""DVC stage `train_vqvae`: the same code as `motionpref train-vqvae`."""

import sys

from motionpref.cli import app

if __name__ == "__main__":
    app(["train-vqvae", *sys.argv[1:]])
