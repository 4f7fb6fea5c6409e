"""`python -m pipeline.sync`: the command lives in pipeline.cli.sync; this name stays where users type it."""

import sys

from pipeline.cli.sync import main

if __name__ == "__main__":
    sys.exit(main())
