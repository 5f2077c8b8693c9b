"""Command line: the only place that catches VmrunError, prints it and picks the exit code."""

from __future__ import annotations

import gc
import os
import signal
import sys
from collections.abc import Sequence

from vmrun.cli.common import Handler, report
from vmrun.cli.parser import build_parser, command_in
from vmrun.errors import VmrunError

EXIT_STDOUT_CLOSED = 128 + signal.SIGPIPE


def main(argv: Sequence[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(command_in(arguments)).parse_args(arguments)
    handler: Handler = args.handler
    try:
        exit_code = handler(args)
        sys.stdout.flush()  # a reader that went away shows here, not in Python's flush at exit
        return exit_code
    except VmrunError as error:
        if args.debug:
            raise
        report(error)
        return error.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return _reader_went_away()
    except Exception as error:  # noqa: BLE001 - the one place a bug becomes exit 1
        if args.debug:
            raise
        print(f"vmrun: internal error: {type(error).__name__}: {error} (rerun with --debug)", file=sys.stderr)
        return 1


def _reader_went_away() -> int:
    """stdout's reader stopped reading (`vmrun status --json | head -c1`): end quietly, with the status
    a shell reports for a process SIGPIPE ended (128 + 13), as git and ls end there."""
    # Python flushes stdout again at exit; let that write go nowhere instead of raising once more.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_STDOUT_CLOSED


def main_exit() -> None:
    # What the imports made and what the run leaves lives until the process ends. Frozen, the collector
    # does not walk it again in each collection during the run, nor in its last pass at exit, which
    # costs a `vmrun up` ~50 ms; the process's end frees it all at once.
    gc.freeze()
    exit_code = main()
    gc.freeze()
    sys.exit(exit_code)
