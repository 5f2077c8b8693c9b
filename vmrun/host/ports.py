"""Host ports for user-mode forwards: why one cannot be listened on, and a free one to pick."""

from __future__ import annotations

import socket

from vmrun.spec.usernet import Forward

_KINDS = {"tcp": socket.SOCK_STREAM, "udp": socket.SOCK_DGRAM}


def _bound(protocol: str, address: str, port: int) -> socket.socket:
    listener = socket.socket(socket.AF_INET, _KINDS[protocol])
    # slirp sets SO_REUSEADDR on its listeners: a port left in TIME_WAIT is no reason for qemu, so none here.
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((address, port))
    except OSError:
        listener.close()
        raise
    return listener


def bind_error(forward: Forward) -> int | None:
    """The errno this process gets binding the forward's host side (qemu got the same, as the same user), or
    None when it binds now."""
    try:
        _bound(forward.protocol, forward.address, forward.host_port).close()
    except OSError as exc:
        return exc.errno
    return None


def free_port(protocol: str, address: str) -> int:
    """A port the kernel says is free on address now; qemu binds it a moment later."""
    with _bound(protocol, address, 0) as listener:
        port: int = listener.getsockname()[1]
        return port
