"""`python -m pipeline.models`: the command lives in pipeline.cli.models; this name stays where users type it."""

import sys

from pipeline.cli.models import main

if __name__ == "__main__":
    sys.exit(main())
