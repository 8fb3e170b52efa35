"""DVC stage `finetune`: the same code as `motionpref finetune`."""

import sys

from motionpref.cli import app

if __name__ == "__main__":
    app(["finetune", *sys.argv[1:]])
