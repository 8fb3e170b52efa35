"""DVC stage `ingest_labels`: the same code as `motionpref ingest-labels`."""

import sys

from motionpref.cli import app

if __name__ == "__main__":
    app(["ingest-labels", *sys.argv[1:]])
