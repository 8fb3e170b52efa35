"""DVC stage `generate_prompts`: the same code as `motionpref generate-prompts`."""

import sys

from motionpref.cli import app

if __name__ == "__main__":
    app(["generate-prompts", *sys.argv[1:]])
