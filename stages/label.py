"""DVC stage `label`: the same code as `motionpref label`."""

import sys

from motionpref.cli import app

if __name__ == "__main__":
    app(["label", *sys.argv[1:]])
