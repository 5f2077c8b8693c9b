"""What every command shares: where its output goes, how its errors are told, the spec and host it names.

Commands import what they use when they run: `validate` and `render` must stay fast, so nothing
only `up` and the commands after it need (`sh`, `qemu.qmp`, asyncio, the lifecycle) is imported on
their way; tests/test_imports.py holds them to it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from vmrun.errors import Problem, UsageError, VmrunError

if TYPE_CHECKING:
    from vmrun.host.facts import HostFacts
    from vmrun.host.system import Host
    from vmrun.spec.model import Spec
    from vmrun.state.locations import Places, RunPaths


Handler = Callable[[argparse.Namespace], int]


def say(message: str) -> None:
    """Progress and notes go to stderr, so stdout stays machine-readable."""
    _stderr_line(f"vmrun: {message}")


def _stderr_line(line: str) -> None:
    # One write per line: VMs report from parallel threads, and print() writes the newline on its own,
    # so two threads' lines could run together. A control character (in a file name, a guest's message) is
    # written escaped: it would split the line or drive the terminal.
    import re

    sys.stderr.write(re.sub(r"[\x00-\x1f\x7f]", lambda bad: repr(bad.group())[1:-1], line) + "\n")
    sys.stderr.flush()


def print_json(value: object) -> None:
    import json

    print(json.dumps(value, indent=1))


def error_json(error: VmrunError) -> dict[str, object]:
    """`errors` and `hint` as every --json output gives them: the lines stderr shows, without `vmrun: error: `."""
    return {"errors": error.lines(), "hint": error.hint}


def report(error: VmrunError, *, prefix: str = "") -> None:
    for line in error.lines():
        _stderr_line(f"vmrun: error: {'' if line.startswith(prefix) else prefix}{line}")
    if error.hint:
        _stderr_line(f"vmrun: hint: {prefix}{error.hint}")


def writable_file(path: Path) -> None:
    """Refuse, before anything is written, an output path that cannot become a file: every output is checked
    first, so a command that writes two files writes neither when the second cannot be."""
    if path.is_dir():
        raise UsageError(f"{path} is a directory", hint="-o names the file to write")
    if not path.parent.is_dir():
        raise UsageError(f"cannot write {path}: {path.parent} is not a directory", hint=f"mkdir -p {path.parent}")


def write_file(path: Path, text: str) -> None:
    writable_file(path)
    try:
        path.write_text(text)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from exc


def spec_checker(args: argparse.Namespace) -> Callable[[str], Spec]:
    """What checks a spec in full: its own checks, the seed files it names, and extra_args that would reach
    vmrun's files under this command's run and state roots. Made once for the many specs of a command: its
    imports, run again for each spec, cost `validate` of 1,000 specs ~3 ms."""
    from vmrun.guest.cloudinit import seed_file_problems
    from vmrun.spec.check import load_valid_spec
    from vmrun.state.locations import extra_args_reaching_vmrun

    def more(spec: Spec) -> list[Problem]:
        reaching = extra_args_reaching_vmrun(spec, places_of(args)) if spec.qemu.extra_args else ()
        return [*seed_file_problems(spec), *reaching]

    def checked(path: str) -> Spec:
        return load_valid_spec(Path(path), path, more=more)

    return checked


def checked_spec(path: str, args: argparse.Namespace) -> Spec:
    """The one spec a command names, checked in full (spec_checker)."""
    return spec_checker(args)(path)


def host_of(args: argparse.Namespace) -> Host:
    from vmrun.host.system import Host

    return Host(root=Path(args.host_root))


def places_of(args: argparse.Namespace) -> Places:
    from vmrun.state.locations import Places

    return Places(run_root=Path(args.run_dir), state_root=Path(args.state_dir), image_cache=Path(args.cache_dir))


def run_paths(args: argparse.Namespace, name: str) -> RunPaths:
    return places_of(args).of(name)


def vm_name(name_or_spec: str) -> str:
    """`down` and friends take a VM name or the spec that names it; either way the name rule holds."""
    from vmrun.spec.vmname import VM_NAME_RULE, is_vm_name

    if name_or_spec.endswith(".toml") or "/" in name_or_spec:
        from vmrun.spec.load import load_spec

        name = load_spec(Path(name_or_spec)).name
        if not is_vm_name(name):
            raise UsageError(f"{name_or_spec}: name: {name!r} is not a valid VM name", hint=VM_NAME_RULE)
        return name
    if not is_vm_name(name_or_spec):
        raise UsageError(f"{name_or_spec!r} is neither a VM name nor a spec file", hint=VM_NAME_RULE)
    return name_or_spec


def facts_for_display(args: argparse.Namespace, spec: Spec, what: str) -> HostFacts:
    """Host facts for render and export, which never run a qemu the user does not control; says what
    the output assumes when qemu was not asked."""
    from vmrun.host.facts import PrivilegeDrop, drops_privileges, gather_facts

    facts = gather_facts(host_of(args), spec.qemu.binary)
    assumed = f"{what} with default capabilities ({PrivilegeDrop.RUNAS}, no -sandbox)"
    if facts.qemu_not_run is not None:
        say(f"not probing qemu.binary {spec.qemu.binary}: {facts.qemu_not_run}; {assumed}")
    elif facts.qemu_version is None:
        say(f"{spec.qemu.binary} not found or does not run; {assumed}")
    elif drops_privileges(spec, facts) and facts.privilege_drop is PrivilegeDrop.IMPOSSIBLE:
        say(f"warning: {spec.qemu.binary} has {facts.privilege_drop}: up refuses to start it as root")
    return facts


def on_cached_bases(spec: Spec, places: Places) -> Spec:
    """For the commands that show a plan without fetching: the spec with its URL bases at their places in the
    image cache, after saying which are not downloaded yet."""
    from vmrun.spec.images import url_bases, with_cached_bases

    for found in url_bases(spec):
        if not (places.image_cache / found.digest.file_name).is_file():
            say(f"disks[{found.index}].base {found.url} is not in the image cache {places.image_cache} yet: "
                f"vmrun up downloads it (or: vmrun image pull {found.url} --digest {found.digest})")
    return with_cached_bases(spec, places.image_cache)


def checked_image_url(url: str, digest: str | None) -> str:
    """A URL and its --digest from the command line, as a spec would need them; the digest."""
    from vmrun.spec.images import DIGEST_FORM, digest_problem, url_problem

    problem = url_problem(url) or (digest_problem(digest) if digest else None)
    if problem is not None:
        raise UsageError(problem)
    if digest is None:
        raise UsageError(f"{url}: --digest is required with a URL: vmrun boots no image it has not verified",
                         hint=f"--digest {DIGEST_FORM}")
    return digest
