"""DVC stage `winrate`: the same code as `motionpref winrate`."""

import sys

from motionpref.cli import app

if __name__ == "__main__":
    app(["winrate", *sys.argv[1:]])
