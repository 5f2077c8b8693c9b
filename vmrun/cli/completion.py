"""Shell completion scripts (bash, zsh, fish) and the man page, both generated from the argparse parser.

The parser is read once into a small model: each command's words, options and positionals, and for every
word what it may be (a kind): spec files, running VM names, host files, directories or a fixed choice.
A kind comes from the metavar, so a new command gets completion from its parser alone. The scripts
ask `vmrun status --names` for VM names when completing, with the --run-dir the command line gives.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator

import attrs

from vmrun import __version__
from vmrun.record import Record

NO_WORD = "value"  # a value to type, nothing to complete (seconds, counts)
MAKES_A_VM = frozenset({"init"})  # its NAME is a new VM's, not a running one


@attrs.frozen(repr=False)
class Option(Record):
    flags: tuple[str, ...]  # "-o", "--output"
    help: str
    kind: str | None  # None: takes no value
    value_name: str  # the metavar, as --help shows it


@attrs.frozen(repr=False)
class Command(Record):
    words: tuple[str, ...]  # ("host", "iommu"); () for vmrun itself
    summary: str
    options: tuple[Option, ...]
    positionals: tuple[str, ...]  # each one's kind
    repeats: bool  # the last positional takes any number of words
    subcommands: tuple[str, ...]
    parser: argparse.ArgumentParser


def kind_of(action: argparse.Action, command: tuple[str, ...]) -> str:
    """What a word for this argument may be: specs, vms, files, dirs, copy, choices:a b, or value."""
    if action.choices is not None:
        return "choices:" + " ".join(map(str, action.choices))
    pieces = set(str(action.metavar or "").split("|"))
    if any(":" in piece for piece in pieces):
        return "copy"  # cp's SRC|NAME:SRC: a host file, or a VM name and a colon
    wanted = [kind for kind, piece in (("vms", "NAME"), ("specs", "SPEC"), ("dirs", "DIR"), ("files", "FILE"),
                                       ("files", "IMAGE")) if piece in pieces]
    if command[:1] and command[0] in MAKES_A_VM and "vms" in wanted:
        wanted.remove("vms")
    if "specs" in wanted and "dirs" in wanted:
        wanted.remove("dirs")  # spec completion offers directories anyway, to walk into
    return "+".join(wanted) or NO_WORD


def commands(parser: argparse.ArgumentParser, words: tuple[str, ...] = (), summary: str = "") -> Iterator[Command]:
    """vmrun itself first, then each command (and each of host's) in `vmrun --help` order."""
    options, positionals, repeats, subcommands = [], [], False, {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            summaries = {choice.dest: choice.help or "" for choice in action._choices_actions}
            subcommands = {name: (sub, summaries.get(name, "")) for name, sub in action.choices.items()}
        elif action.option_strings:
            if action.help != argparse.SUPPRESS:
                takes_value = action.nargs != 0
                options.append(Option(tuple(action.option_strings), _plain(action.help or "", action),
                                      kind_of(action, words) if takes_value else None, _value_name(action)))
        elif action.nargs != argparse.REMAINDER:
            positionals.append(kind_of(action, words))
            repeats = action.nargs in ("*", "+")
        else:
            repeats = False
    yield Command(words, summary, tuple(options), tuple(positionals), repeats, tuple(subcommands), parser)
    for name, (sub, sub_summary) in subcommands.items():
        yield from commands(sub, (*words, name), sub_summary)


def _value_name(action: argparse.Action) -> str:
    if action.metavar is not None:
        return str(action.metavar)
    return "{" + ",".join(map(str, action.choices)) + "}" if action.choices else action.dest.upper()


def _plain(text: str, action: argparse.Action) -> str:
    return text.replace("%(default)s", str(action.default)).replace("%%", "%")


# The walk over the words before the cursor, shared by bash and zsh: it sets _vmrun_kind (what the word at
# the cursor may be) and _vmrun_run_dir (a --run-dir given, for the VM names).
_WALK = r"""
_vmrun_walk() {
    local command= expect= rest= count=0 word
    _vmrun_run_dir=
    while [[ $# -gt 1 ]]; do
        word=$1; shift
        if [[ -n $expect ]]; then
            [[ $expect == --run-dir ]] && _vmrun_run_dir=$word
            expect=; continue
        fi
        if [[ -n $rest ]]; then count=$((count + 1)); continue; fi
        case $word in
            --) rest=1; continue ;;
            --run-dir=*) _vmrun_run_dir=${word#*=}; continue ;;
            -*=*) continue ;;
            -*) [[ -n $(_vmrun_value "$command" "$word") ]] && expect=$word; continue ;;
        esac
        if [[ " $(_vmrun_subcommands "$command") " == *" $word "* ]]; then
            command=${command:+$command }$word
        else
            count=$((count + 1))
        fi
    done
    if [[ -n $expect ]]; then _vmrun_kind=$(_vmrun_value "$command" "$expect")
    elif [[ -n $rest ]]; then _vmrun_kind=value
    elif [[ $1 == -* ]]; then _vmrun_kind="choices:$(_vmrun_options "$command")"
    elif [[ -n $(_vmrun_subcommands "$command") ]]; then _vmrun_kind="choices:$(_vmrun_subcommands "$command")"
    else _vmrun_kind=$(_vmrun_positional "$command" "$count")
    fi
}
"""

_BASH = r"""
_vmrun() {
    # bash splits NAME:PATH at the colon: join the pieces again (no vmrun argument is a lone ':').
    local words=() word i
    for ((i = 1; i <= COMP_CWORD; i++)); do
        word=${COMP_WORDS[i]}
        if [[ ${#words[@]} -gt 0 && ( $word == : || ${words[-1]} == *: ) ]]; then
            words[-1]+=$word
        else
            words+=("$word")
        fi
    done
    local cur=${words[-1]}
    _vmrun_walk "${words[@]}"
    COMPREPLY=()
    case $_vmrun_kind in
        choices:*) _vmrun_reply -W "${_vmrun_kind#choices:}" -- "$cur" ;;
        *vms*) _vmrun_reply -W "$(_vmrun_names)" -- "$cur" ;;&
        *specs*) compopt -o filenames; _vmrun_reply -f -X '!*.toml' -- "$cur"; _vmrun_reply -d -- "$cur" ;;
        *files*) compopt -o filenames; _vmrun_reply -f -- "$cur" ;;
        *dirs*) compopt -o filenames; _vmrun_reply -d -- "$cur" ;;
        copy)
            [[ $cur == *:* ]] && return  # a path in the guest: nothing to offer
            compopt -o filenames -o nospace
            _vmrun_reply -W "$(_vmrun_names | sed 's/$/:/')" -- "$cur"; _vmrun_reply -f -- "$cur" ;;
    esac
}
_vmrun_reply() {  # compgen's lines onto COMPREPLY, one word each: a file name's spaces and '*' stay in it
    mapfile -t -O "${#COMPREPLY[@]}" COMPREPLY < <(compgen "$@")
}
complete -F _vmrun vmrun
"""

_ZSH = r"""
_vmrun() {
    local _vmrun_kind _vmrun_run_dir
    _vmrun_walk "${(@)words[2,CURRENT]}"
    case $_vmrun_kind in
        choices:*) compadd -- ${=_vmrun_kind#choices:} ;;
        copy) compadd -S : -- ${(f)"$(_vmrun_names)"}; _files ;;
        *)
            [[ $_vmrun_kind == *vms* ]] && compadd -- ${(f)"$(_vmrun_names)"}
            [[ $_vmrun_kind == *specs* ]] && _files -g '*.toml'
            [[ $_vmrun_kind == *files* ]] && _files
            [[ $_vmrun_kind == *dirs* ]] && _files -/
            ;;
    esac
    return 0
}
if [[ $zsh_eval_context[-1] == loadautofunc ]]; then
    _vmrun "$@"
else
    compdef _vmrun vmrun
fi
"""

_NAMES = r"""
_vmrun_names() {
    if [[ -n $_vmrun_run_dir ]]; then
        vmrun --run-dir="$_vmrun_run_dir" status --names 2>/dev/null
    else
        vmrun status --names 2>/dev/null
    fi
}
"""

_SAFE = re.compile(r"[A-Za-z0-9 :+_.-]*")  # what may go between single quotes in the tables


def _quoted(text: str) -> str:
    if not _SAFE.fullmatch(text):
        raise ValueError(f"{text!r} cannot go into a completion table")
    return f"'{text}'"


def _tables(model: list[Command]) -> str:
    """The parser as four shell functions of the command (words joined by spaces)."""
    def function(name: str, comment: str, cases: list[tuple[list[str], str]], subject: str) -> str:
        body = "".join(f"        {'|'.join(patterns)}) echo {_quoted(value)} ;;\n" for patterns, value in cases)
        return f"{name}() {{  # {comment}\n    case {subject} in\n{body}    esac\n}}\n"

    values, options, subcommands, positionals = [], [], [], []
    for command in model:
        words = " ".join(command.words)
        flags = [flag for option in command.options for flag in option.flags]
        options.append(([_quoted(words)], " ".join(flags)))
        if command.subcommands:
            subcommands.append(([_quoted(words)], " ".join(command.subcommands)))
        for option in command.options:
            if option.kind is not None:
                values.append(([_quoted(f"{words} {flag}") for flag in option.flags], option.kind))
        for index, kind in enumerate(command.positionals):
            last = index == len(command.positionals) - 1
            pattern = _quoted(f"{words} ") + "*" if last and command.repeats else _quoted(f"{words} {index}")
            positionals.append(([pattern], kind))
    return (
        function("_vmrun_value", "$1 command, $2 option: the kind of its value; nothing for a flag", values,
                 '"$1 $2"')
        + function("_vmrun_options", "$1 command: its options", options, '"$1"')
        + function("_vmrun_subcommands", "$1 command: the commands under it", subcommands, '"$1"')
        + function("_vmrun_positional", "$1 command, $2 index: the kind of that positional", positionals,
                   '"$1 $2"')
    )


def _header(shell: str) -> str:
    return f"# {shell} completion for vmrun {__version__}, generated from its parser by `vmrun completion {shell}`\n"


def bash_script(model: list[Command]) -> str:
    return _header("bash") + _NAMES + _tables(model) + _WALK + _BASH


def zsh_script(model: list[Command]) -> str:
    return "#compdef vmrun\n" + _header("zsh") + _NAMES + _tables(model) + _WALK + _ZSH


_FISH_NAMES = r"""
function __vmrun_names
    set -l words (commandline -opc)
    set -l run_dir
    for i in (seq (count $words))
        switch $words[$i]
            case --run-dir
                set run_dir --run-dir $words[(math $i + 1)]
            case '--run-dir=*'
                set run_dir $words[$i]
        end
    end
    vmrun $run_dir status --names 2>/dev/null
end
function __vmrun_specs
    # Spec files, and directories to walk into.
    for path in (commandline -ct)*
        if test -d $path
            echo $path/
        else if string match -q -- '*.toml' $path
            echo $path
        end
    end
end
complete -c vmrun -f
"""

_FISH_KINDS = {
    "vms": "-a '(__vmrun_names)'",
    "specs": "-a '(__vmrun_specs)'",
    "files": "-F",
    "dirs": "-a '(__fish_complete_directories)'",
    "copy": "-F -a '(__vmrun_names | string replace -r \\$ :)'",
}


def _fish_quoted(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _fish_arguments(kind: str) -> str:
    if kind.startswith("choices:"):
        return f"-a {_fish_quoted(kind.removeprefix('choices:'))}"
    return " ".join(_FISH_KINDS[part] for part in kind.split("+") if part in _FISH_KINDS)


def fish_script(model: list[Command]) -> str:
    lines = [_header("fish") + _FISH_NAMES]
    for command in model:
        if not command.words:
            condition = "__fish_use_subcommand"
        else:
            # A command of host's (iommu) counts once host was seen: fish cannot tell the words' order apart.
            condition = " && ".join(f"__fish_seen_subcommand_from {word}" for word in command.words)
            if command.subcommands:
                condition += f" && not __fish_seen_subcommand_from {' '.join(command.subcommands)}"
        prefix = f"complete -c vmrun -n {_fish_quoted(condition)}"
        for option in command.options:
            names = " ".join(f"-l {flag[2:]}" if flag.startswith("--") else f"-s {flag[1:]}" for flag in option.flags)
            # -x: only what the kind offers, -r -F: files
            takes = "-r" if option.kind is not None and "files" in option.kind else "-x"
            value = "" if option.kind is None else f" {takes} {_fish_arguments(option.kind)}".rstrip()
            lines.append(f"{prefix} {names}{value} -d {_fish_quoted(_first_sentence(option.help))}")
        for name in command.subcommands:
            summary = next(sub.summary for sub in model if sub.words == (*command.words, name))
            lines.append(f"{prefix} -a {name} -d {_fish_quoted(summary)}")
        for kind in dict.fromkeys(command.positionals):
            if arguments := _fish_arguments(kind):
                lines.append(f"{prefix} {arguments}")
    return "\n".join(lines) + "\n"


def _first_sentence(text: str) -> str:
    return text.split("; ")[0]


SCRIPTS = {"bash": bash_script, "zsh": zsh_script, "fish": fish_script}


def completion_script(shell: str, parser: argparse.ArgumentParser) -> str:
    """parser: the whole grammar, every command's sub-parser (a normal run builds only its own)."""
    return SCRIPTS[shell](list(commands(parser)))


def _roff(text: str) -> str:
    """Text for a roff line: backslashes and hyphens escaped, no line starting as a request."""
    escaped = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + escaped if escaped.startswith((".", "'")) else escaped


def _usage(parser: argparse.ArgumentParser) -> str:
    return " ".join(parser.format_usage().removeprefix("usage: ").split())


def man_page(parser: argparse.ArgumentParser) -> str:
    """vmrun(1) in roff (man -l), from the whole parser: every command with its usage, description and options."""
    model = list(commands(parser))
    lines = [
        f'.TH VMRUN 1 "" "vmrun {__version__}" "User Commands"',
        ".nh", ".ad l",  # option names and paths stay whole
        ".SH NAME", "vmrun \\- " + _roff(parser.description or ""),
        ".SH SYNOPSIS", _roff(_usage(parser)),
        ".SH OPTIONS", *_man_options(model[0].options),
        ".SH COMMANDS",
    ]
    for command in model[1:]:
        if command.subcommands:
            continue  # host: its commands follow, each on its own
        lines += [f".SS {_roff(' '.join(command.words))}", _roff(_usage(command.parser)), ".PP",
                  _roff(command.parser.description or command.summary), *_man_options(command.options)]
    lines += [
        ".SH EXIT STATUS", _roff(parser.epilog or ""),
        ".SH ENVIRONMENT",
        *(line for variable, option in (("VMRUN_HOST_ROOT", "--host-root"), ("VMRUN_RUN_DIR", "--run-dir"),
                                        ("VMRUN_STATE_DIR", "--state-dir"), ("VMRUN_CACHE_DIR", "--cache-dir"))
          for line in (".TP", f".B {variable}", _roff(f"the default of {option}"))),
        ".SH SEE ALSO", "qemu\\-system\\-x86_64(1), qemu\\-ga(8)",
    ]
    return "\n".join(lines) + "\n"


def _man_options(options: tuple[Option, ...]) -> list[str]:
    lines = []
    for option in options:
        if option.flags == ("-h", "--help"):
            continue
        value = "" if option.kind is None else f" \\fI{_roff(option.value_name)}\\fR"
        lines += [".TP", "\\fB" + ", ".join(_roff(flag) for flag in option.flags) + "\\fR" + value, _roff(option.help)]
    return lines
