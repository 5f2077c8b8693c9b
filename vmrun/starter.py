"""`vmrun init`: a commented starter spec a person can edit."""

from __future__ import annotations

import tomli_w

_TEMPLATE = """\
# vmrun spec: `vmrun validate {file}` checks it, `vmrun render {file}` shows the qemu command,
# `vmrun up {file}` runs it. Relative paths are relative to this file.
{name_line}
description = "describe this VM"

[machine]
accel = "auto"            # auto | kvm | tcg
cpus = 2
memory = "2G"             # K M G T; a bare number is MiB

[boot]
disk = "root"             # or: kernel = "vmlinuz", initrd = "initrd.gz", append = "console=ttyS0"
firmware = "bios"         # bios | uefi

[[disks]]                 # every disk is a LUN on one virtio-scsi controller
id = "root"
path = "{name}-root.qcow2"
format = "qcow2"          # raw | qcow2
size = "20G"              # created by `vmrun up` when missing
cache = "none"            # none | writeback | writethrough | directsync | unsafe
aio = "native"            # threads | native | io_uring
discard = true

[[nics]]
id = "net0"
queues = 2                # queue pairs, at most machine.cpus; vmrun runs `ethtool -L <if> combined N` in the guest
vhost = "auto"            # true | false | auto
# bridge = "br0"          # attach the tap to this existing bridge

# [[shares]]              # VirtFS (9p): mount -t 9p -o trans=virtio,version=9p2000.L data /mnt
# id = "data"
# path = "/srv/data"
# tag = "data"
# security_model = "mapped-xattr"
# readonly = true

# [[vfio]]                # PCI passthrough; `vmrun host iommu` lists candidates
# id = "nvme0"
# host = "0000:01:00.0"

[agent]
enabled = true
timeout = "120s"

# [[post_boot]]           # run in the guest over the agent after boot
# run = ["/bin/sh", "-c", "echo hello"]
# timeout = "60s"
"""


def starter_spec(name: str, file: str) -> str:
    # tomli-w writes the one user-given value, so any name comes out as valid TOML.
    return _TEMPLATE.format(name_line=tomli_w.dumps({"name": name}).strip(), name=name, file=file)
