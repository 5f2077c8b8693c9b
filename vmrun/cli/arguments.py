"""Arguments that more than one place reads: value checks, and the options of the commands that end in a
command line (exec, ssh), which are read again when given after NAME."""

from __future__ import annotations

import argparse
from collections.abc import Callable

JSON_HELP = "print the result as JSON on stdout (README: JSON output)"


def positive_int(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 1024:
        raise argparse.ArgumentTypeError(f"{text} is not between 1 and 1024")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is not a number of lines (0 or more)")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not 0 < value <= 86400:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"{text} is not a number of seconds over 0 and at most 86400 (a day)")
    return value


def ssh_options(parser: argparse.ArgumentParser) -> None:
    """`vmrun ssh`'s options and command."""
    parser.add_argument("command_line", nargs=argparse.REMAINDER, metavar="-- CMD...")
    parser.add_argument("-l", "--user", help="default: the user the spec's cloud-init user-data creates, else yours")
    parser.add_argument("-i", "--identity", metavar="FILE", help="the private key (default: ssh's own choice)")
    parser.add_argument("-o", dest="option", action="append", default=[], metavar="OPTION",
                        help="an ssh option (ssh -o: ForwardAgent=yes, LocalForward=...), before vmrun's own")


def exec_options(parser: argparse.ArgumentParser) -> None:
    """`vmrun exec`'s options and command."""
    parser.add_argument("command_line", nargs=argparse.REMAINDER, metavar="-- CMD...")
    parser.add_argument("--timeout", type=positive_float, default=60.0, metavar="S",
                        help="seconds the command may run (default: 60); then exit 5")
    # Asked for, as docker and kubectl exec -i: a standard input left open (a CI job's) would wait for good.
    parser.add_argument("-i", "--stdin", action="store_true",
                        help="send standard input to the command (read to its end first, at most 32 MiB)")
    parser.add_argument("--agent-timeout", type=positive_float, default=10.0, metavar="S", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help=JSON_HELP)


def options_after_name(args: argparse.Namespace,
                       add_options: Callable[[argparse.ArgumentParser], None]) -> argparse.Namespace:
    """`vmrun ssh NAME -o X -- CMD`, `vmrun exec NAME --json -- CMD`: argparse leaves every word after NAME
    in the command line (REMAINDER); the options at its head are read here as the command's own."""
    words = args.command_line
    again = argparse.ArgumentParser(prog=f"vmrun {args.command} NAME", add_help=False)
    add_options(again)
    known = [option for action in again._actions for option in action.option_strings]
    # argparse drops a "--" right after NAME, so a command that starts with an option word is read as options.
    if not words or not any(words[0] == option or words[0].startswith(f"{option}=") or
                            (len(option) == 2 and words[0].startswith(option)) for option in known):
        return args
    merged = vars(args).copy()
    for key, value in vars(again.parse_args(words)).items():
        if key == "command_line":
            merged[key] = value
        elif isinstance(value, list):
            merged[key] = [*merged.get(key, []), *value]
        elif value != again.get_default(key):
            merged[key] = value
    return argparse.Namespace(**merged)
