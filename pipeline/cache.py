"""`python -m pipeline.cache`: the command lives in pipeline.cli.cache; this name stays where users type it."""

import sys

from pipeline.cli.cache import main

if __name__ == "__main__":
    sys.exit(main())
