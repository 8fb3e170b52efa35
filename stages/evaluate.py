"""DVC stage `evaluate`: the same code as `motionpref evaluate`."""

import sys

from motionpref.cli import app

if __name__ == "__main__":
    app(["evaluate", *sys.argv[1:]])
