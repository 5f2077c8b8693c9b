"""`vmrun cp`: which side is the guest, and one file or a tree (vmrun/guest/copytree.py) between them.
"""

from __future__ import annotations

import time
from pathlib import Path

from vmrun.errors import AgentError, UsageError
from vmrun.guest import copytree
from vmrun.guest.agent import GuestAgent
from vmrun.guest.copy import CALLS, Copied, GuestPath, download, guest_run, upload
from vmrun.progress import Say
from vmrun.spec.vmname import VM_NAME_RULE, is_vm_name

USAGE = "vmrun cp SRC NAME:DST or vmrun cp NAME:SRC DST"


def endpoint(text: str) -> GuestPath | Path:
    """NAME:PATH names a file in a guest; anything else (./a:b, /x/a:b) a host path."""
    vm, colon, path = text.partition(":")
    if not colon or "/" in vm:
        return Path(text)
    if not is_vm_name(vm):
        raise UsageError(f"{text}: {vm!r} is not a VM name",
                         hint=f"{VM_NAME_RULE}; a host path with ':' goes as ./{text}")
    if not path.startswith("/"):
        raise UsageError(f"{text}: the guest path must be absolute", hint=f"{vm}:/{path}")
    return GuestPath(vm, path)


def endpoints(source: str, destination: str) -> tuple[str, GuestPath | Path, GuestPath | Path]:
    """The VM, the source and the destination: exactly one of them is in the VM."""
    ends = endpoint(source), endpoint(destination)
    in_guest = [end for end in ends if isinstance(end, GuestPath)]
    if len(in_guest) != 1:
        raise UsageError("one side of vmrun cp is a guest path NAME:PATH, the other a host path", hint=USAGE)
    return in_guest[0].vm, *ends


def names_a_directory(text: str) -> bool:
    """A trailing slash says the destination is a directory, as it does to cp (a Path drops the slash)."""
    return text.endswith("/")


def copy(vm: str, source: GuestPath | Path, destination: GuestPath | Path, agent_socket: Path, *,
         recursive: bool = False, into_directory: bool = False, agent_timeout: float, say: Say) -> Copied:
    """One file; with recursive, a directory source is copied as a tree (vmrun/guest/copytree.py).
    into_directory: the destination was written with a trailing slash."""
    try:
        return _copy(source, destination, agent_socket, recursive=recursive, into_directory=into_directory,
                     agent_timeout=agent_timeout, say=say)
    except AgentError as error:
        raise AgentError(f"{vm}: {error}", hint=error.hint) from error


def _copy(source: GuestPath | Path, destination: GuestPath | Path, agent_socket: Path, *,
          recursive: bool, into_directory: bool, agent_timeout: float, say: Say) -> Copied:
    with GuestAgent(agent_socket) as agent:
        agent.wait_ready(timeout=agent_timeout)
        started = time.monotonic()
        copied: Copied
        if isinstance(source, GuestPath):
            assert isinstance(destination, Path)  # endpoints() made sure
            agent.require(*CALLS, "guest-file-read", purpose="to copy a file from the guest")
            if recursive and guest_run(agent, ["test", "-d", source.path], check=False).ok:
                copied = copytree.download_tree(agent, source, destination, say=say)
            else:
                copied = download(agent, source, destination, into_directory=into_directory)
        else:
            assert isinstance(destination, GuestPath)
            agent.require(*CALLS, "guest-file-write", purpose="to copy a file into the guest")
            if recursive and source.is_dir():
                copied = copytree.upload_tree(agent, source, destination, say=say)
            else:
                copied = upload(agent, source, destination)
    seconds = time.monotonic() - started
    say(f"{copied} in {seconds:.1f} s ({copied.size / 2**20 / max(seconds, 1e-3):.1f} MiB/s)")
    return copied
