"""``python -m core.train``: the door; the work is done in core.training.trainer."""

import sys

from core.training.trainer import main

if __name__ == "__main__":
    sys.exit(main())
