"""`python -m training --help`."""

import sys
import time

started = time.monotonic()  # before torch is imported: --max-minutes counts that too

from training.cli import main  # noqa: E402

sys.exit(main(started=started))
