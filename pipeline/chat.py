"""`python -m pipeline.chat`: the command lives in pipeline.cli.chat; this name stays where users type it."""

import sys

from pipeline.cli.chat import main

if __name__ == "__main__":
    sys.exit(main())
