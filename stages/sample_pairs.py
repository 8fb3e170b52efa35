"""DVC stage `sample_pairs`: the same code as `motionpref sample-pairs`."""

import sys

from motionpref.cli import app

if __name__ == "__main__":
    app(["sample-pairs", *sys.argv[1:]])
