"""DVC stage `report`: the same code as `motionpref report`."""

import sys

from motionpref.cli import app

if __name__ == "__main__":
    app(["report", *sys.argv[1:]])
