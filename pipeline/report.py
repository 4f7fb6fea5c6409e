"""`python -m pipeline.report`: the command lives in pipeline.cli.report; this name stays where users type it."""

import sys

from pipeline.cli.report import main

if __name__ == "__main__":
    sys.exit(main())
