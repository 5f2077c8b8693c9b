"""The same VM as a systemd unit that runs `vmrun up` and `vmrun down`. Pure: text in, text out.

Every value is written as systemd.unit(5) and systemd.service(5) read it back: `%` starts a specifier in
each setting written here, `$` a variable in a command line, and a command line's words split on
whitespace unless quoted.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from vmrun.export import Export
from vmrun.spec.model import Spec

if TYPE_CHECKING:
    from vmrun.state.locations import RunPaths

# A command line word that systemd reads back unchanged without quotes: no whitespace, quotes, backslash,
# specifier or variable, and not a lone ";" (which once separated commands).
_PLAIN_WORD = re.compile(r"[A-Za-z0-9_@+=:,./-]+")
# Inside double quotes systemd undoes C escapes; these are the characters that need one.
_C_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _specifiers_kept(text: str) -> str:
    """`%` doubled, so systemd reads it back as itself rather than as a specifier."""
    return text.replace("%", "%%")


def _c_escaped(character: str) -> str:
    if character in _C_ESCAPES:
        return _C_ESCAPES[character]
    return f"\\x{ord(character):02x}" if ord(character) < 0x20 or ord(character) == 0x7F else character


def _exec_word(word: str, *, variables: bool = True) -> str:
    if _PLAIN_WORD.fullmatch(word):
        return word
    quoted = _specifiers_kept("".join(map(_c_escaped, word)))
    return '"' + (quoted.replace("$", "$$") if variables else quoted) + '"'


def _command_line(executable: str, *arguments: str) -> str:
    # systemd substitutes $VARIABLES in the arguments only: the executable's path is taken as written.
    return " ".join([_exec_word(executable, variables=False), *map(_exec_word, arguments)])


def systemd_unit(spec: Spec, *, spec_path: Path, vmrun: Path, paths: RunPaths, image_cache: Path) -> Export:
    """A unit that brings the VM up at boot and supervises its qemu through its pidfile. The roots of ``paths``
    (a VM's directories are direct children of them) and ``image_cache``, absolute, are passed on, so the unit's
    vmrun finds the VM, its UEFI variables and its base images where the exporting command would."""
    post_boot = sum(hook.timeout for hook in spec.post_boot)
    start_timeout = int(spec.agent.timeout + post_boot + 120)
    roots = ["--run-dir", str(paths.run_dir.parent), "--state-dir", str(paths.state_dir.parent),
             "--cache-dir", str(image_cache)]
    up = _command_line(str(vmrun), *roots, "up", str(spec_path))
    down = _command_line(str(vmrun), *roots, "down", spec.name, "--timeout", "60")
    description = f"vmrun VM {spec.name}" + (f" ({spec.description})" if spec.description else "")
    # Documentation= is a space-separated list of URIs: the file URL has its spaces (and `%`) percent-encoded.
    text = f"""\
[Unit]
Description={_specifiers_kept(description)}
Documentation={_specifiers_kept(spec_path.as_uri())}
After=network-online.target
Wants=network-online.target

[Service]
# vmrun up returns once qemu has daemonized and the post-boot steps are done; systemd then
# supervises qemu through its pidfile and restarts the VM when qemu dies.
Type=forking
PIDFile={_specifiers_kept(str(paths.pidfile))}
ExecStart={up}
ExecStop={down}
TimeoutStartSec={start_timeout}
TimeoutStopSec=90
Restart=on-failure
RestartSec=5

[Install]
WantedBy=multi-user.target
"""
    return Export(text)
