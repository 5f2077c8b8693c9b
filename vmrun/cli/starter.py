"""`vmrun init`: a commented starter spec a person can edit; with a base image, the cloud-init user-data too."""

from __future__ import annotations

import json
from collections.abc import Sequence

import tomli_w

from vmrun.host.user import PUBLIC_KEY_FILES

# The public keys `init` puts into the user-data, as Lima looks for them.
ROOT_STANDIN = "vmrun"  # the guest user when root runs `init`: cloud-init's users: must not redefine root

_EMPTY_DISK_INTRO = """\
# The root disk below starts EMPTY: this VM boots nothing until you install an operating system on it,
# or set base to a cloud image (`vmrun init NAME --base IMAGE` writes a spec that does).
"""

_CLOUD_IMAGE_INTRO = """\
# Boots the cloud image {base} through a qcow2 overlay ({overlay}): the image itself is never
# written. cloud-init sets the guest up from {user_data} at its first boot.
"""

_TEMPLATE = """\
# vmrun spec: `vmrun validate {file}` checks it, `vmrun render {file}` shows the qemu command,
# `vmrun up {file}` runs it. Relative paths are relative to this file.
{intro}{name_line}
description = "describe this VM"

[machine]
accel = "auto"            # auto | kvm | tcg
cpus = 2
memory = "2G"             # K M G T; a bare number is MiB

[boot]
disk = "root"             # or: kernel = "vmlinuz", initrd = "initrd.gz", append = "console=ttyS0"
firmware = "{firmware}"         # bios | uefi

[[disks]]                 # every disk is a LUN on one virtio-scsi controller
id = "root"
path = "{name}-root.qcow2"
{base_lines}format = "qcow2"          # raw | qcow2
size = "20G"              # {size_comment}
cache = "none"            # none | writeback | writethrough | directsync | unsafe
aio = "native"            # threads | native | io_uring
discard = true

{nics}
# [[shares]]              # VirtFS (9p): mount -t 9p -o trans=virtio,version=9p2000.L data /mnt
# id = "data"
# path = "/srv/data"
# tag = "data"
# security_model = "mapped-xattr"
# readonly = true

# [[vfio]]                # PCI passthrough; `vmrun host iommu` lists candidates
# id = "nvme0"
# host = "0000:01:00.0"
{cloud_init}
[agent]
enabled = true
timeout = "{agent_timeout}"

# [[post_boot]]           # run in the guest over the agent after boot
# run = ["/bin/sh", "-c", "echo hello"]
# timeout = "60s"
"""

_TAP_NIC = """\
[[nics]]
id = "net0"
queues = 2                # queue pairs, at most machine.cpus; vmrun runs `ethtool -L <if> combined N` in the guest
vhost = "auto"            # true | false | auto
# bridge = "br0"          # attach the tap to this existing bridge
# mode = "user"           # or qemu's own network, no root and no tap (then drop queues and vhost)...
# forward = ["tcp:auto:22"]   # ...reached through a host port `up` picks, to the guest's sshd (`vmrun ssh`)
"""

# A cloud image's first boot needs a package mirror (for the agent) and the host needs a way to its sshd:
# qemu's own network gives both with no host change, and a picked port lets two VMs share one template.
_USER_NIC = """\
[[nics]]
id = "net0"
mode = "user"             # qemu's own network: outbound NAT, no root, no tap, no host change
forward = ["tcp:auto:22"] # the guest's sshd on a free host port `vmrun up` picks; `vmrun ssh NAME` finds it
# Or the host's network through a tap on a bridge (root; the guest then needs a mirror reachable on it):
# [[nics]]
# id = "net0"
# bridge = "br0"          # attach the tap to this existing bridge
# queues = 2              # queue pairs, at most machine.cpus; vmrun runs `ethtool -L <if> combined N` in the guest
# vhost = "auto"          # true | false | auto
"""

_BASE_LINES = """\
# base: a read-only backing image; `vmrun up` creates path as a qcow2 overlay on it when missing
{base_line}
# ephemeral = true        # a fresh overlay at every `up`, deleted at `down`
"""

_DOWNLOADED = "# a URL: `vmrun up` downloads it once into the image cache, verified against base_digest"

_CLOUD_INIT = """
[cloud_init]              # a NoCloud seed vmrun builds at every `up`, attached as a read-only CD-ROM
{user_data_line}
# network_config = "net.yaml"   # network-config v1/v2
# meta_data: merged over vmrun's instance-id (a hash of the seed) and local-hostname (the VM name)
# meta_data = {{ local-hostname = "{name}" }}
"""


def user_data_file(name: str) -> str:
    return f"{name}-user-data.yaml"


def _toml_line(key: str, value: str) -> str:
    # tomli-w writes every user-given value, so any name or path comes out as valid TOML.
    return tomli_w.dumps({key: value}).strip()


def starter_spec(name: str, file: str, *, base: str | None = None, digest: str | None = None) -> str:
    """base: the cloud image, as the spec should name it (relative to the spec's directory, or absolute, or a
    URL, with the digest it must have)."""
    values = {"name": name, "file": file, "name_line": _toml_line("name", name)}
    if base is None:
        return _TEMPLATE.format(
            **values, intro=_EMPTY_DISK_INTRO, firmware="bios", base_lines="", cloud_init="",
            size_comment="created empty by `vmrun up` when missing", nics=_TAP_NIC, agent_timeout="120s",
        )
    return _TEMPLATE.format(
        **values,
        intro=_CLOUD_IMAGE_INTRO.format(base=base, overlay=f"{name}-root.qcow2", user_data=user_data_file(name)),
        firmware="uefi",
        base_lines=_BASE_LINES.format(base_line="\n".join(
            [_toml_line("base", base), *([_DOWNLOADED, _toml_line("base_digest", digest)] if digest else [])])),
        size_comment="the overlay's virtual size (at least the image's); cloud-init grows the root partition",
        nics=_USER_NIC,
        cloud_init=_CLOUD_INIT.format(name=name, user_data_line=_toml_line("user_data", user_data_file(name))),
        # A first boot runs cloud-init, which installs the agent: minutes under TCG.
        agent_timeout="600s",
    )


def starter_user_data(user: str, keys: Sequence[str]) -> str:
    """#cloud-config that gives `user` a login by SSH key and sudo, and installs the agent vmrun waits for."""
    if keys:
        key_lines = "    ssh_authorized_keys:\n" + "".join(f"      - {json.dumps(key)}\n" for key in keys)
    else:
        key_lines = f"    # no SSH public key found ({', '.join(PUBLIC_KEY_FILES)}): add yours here\n" \
                    "    ssh_authorized_keys: []\n"
    return f"""\
#cloud-config
# Written by `vmrun init`; cloud-init applies it at the first boot of each new instance
# (vmrun gives the seed a new instance-id whenever this file changes).
users:
  - default
  - name: {json.dumps(user)}
    sudo: "ALL=(ALL) NOPASSWD:ALL"
    shell: /bin/bash
{key_lines}
# Cloud images rarely ship the QEMU guest agent, which `vmrun up` waits for: install and start it.
# This needs the guest to reach a package mirror (the user-mode NIC gives it the host's way out);
# without one, drop these lines and set agent.enabled = false in the spec.
packages: [qemu-guest-agent]
runcmd:
  - [systemctl, start, qemu-guest-agent]
"""
