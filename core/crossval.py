"""``python -m core.crossval``: the door; the work is done in core.training.crossval."""

import sys

from core.training.crossval import main

if __name__ == "__main__":
    sys.exit(main())
