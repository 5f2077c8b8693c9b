"""Who ran vmrun (through sudo too) and their SSH keys: what `init` puts into a guest's user-data and what
`vmrun ssh` offers the guest."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from vmrun.host.system import Host

# The keys Lima and ssh-keygen make by default, in the order ssh tries them.
PUBLIC_KEY_FILES = ("id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub")


def invoking_user(host: Host, environ: Mapping[str, str]) -> str:
    """The user behind this vmrun: under sudo, the one who ran sudo."""
    return environ.get("SUDO_USER") or host.current_user().name


def invoking_home(host: Host, environ: Mapping[str, str]) -> Path | None:
    """Where the invoking user's `~/.ssh` is: `$HOME`, as the shell's `~` and Lima read it; under sudo (whose
    `$HOME` may be root's) or without `$HOME`, the sudo user's home in the password database."""
    home = environ.get("HOME")
    if home and not environ.get("SUDO_USER"):
        return Path(home)
    return host.home_dir(invoking_user(host, environ))


def public_keys(home: Path | None) -> list[str]:
    if home is None:
        return []
    keys = []
    for file in PUBLIC_KEY_FILES:
        try:
            keys.append((home / ".ssh" / file).read_text().strip())
        except OSError:
            continue
    return [key for key in keys if key]


def private_keys(home: Path | None) -> list[Path]:
    """The private halves of the public keys, where they exist."""
    if home is None:
        return []
    return [key for key in (home / ".ssh" / file.removesuffix(".pub") for file in PUBLIC_KEY_FILES) if key.exists()]
