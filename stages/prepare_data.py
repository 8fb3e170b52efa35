"""DVC stage `prepare_data`: the same code as `motionpref prepare-data`."""

import sys

from motionpref.cli import app

if __name__ == "__main__":
    app(["prepare-data", *sys.argv[1:]])
