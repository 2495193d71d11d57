"""``python -m core.evaluate``: the door; the work is done in core.training.evaluate."""

import sys

from core.training.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
