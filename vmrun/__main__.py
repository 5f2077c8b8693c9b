"""The `vmrun` console script, and `python -m vmrun`."""

from __future__ import annotations

import gc
import threading

# Starting a command (its imports, tens of thousands of objects that live until the process ends, and its specs
# structured) makes the cyclic collector walk the same live objects again and again: ~4 ms of a ~65 ms `render`,
# ~10 ms of validating 1,000 specs. Reference counting still frees everything else at once. Collection resumes
# after this many seconds, for the commands that run for minutes or hours (`up` waiting for guests, `logs -f`).
COLLECTOR_PAUSE = 1.0


def main() -> None:
    gc.disable()
    resume = threading.Timer(COLLECTOR_PAUSE, gc.enable)
    resume.daemon = True
    resume.start()
    from vmrun.cli.main import main_exit  # after the pause begins: importing vmrun is most of what it saves

    main_exit()


if __name__ == "__main__":
    main()
