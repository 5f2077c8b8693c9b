"""Fake host trees laid out as Linux's sysfs is, and FakeHost: a Host whose kernel reacts to writes as Linux does.

Links are relative and point where the kernel's do: bus/pci/devices/ADDR -> devices/pci0000:00/[BRIDGE/]ADDR,
ADDR/iommu_group -> kernel/iommu_groups/N, ADDR/driver -> bus/pci/drivers/NAME, class/net/IF -> the device's
net/IF, class/block/NAME -> the disk or partition. FakeHost's kernel honours driver_override on drivers_probe
and bind, drops the driver link on unbind, and keeps /dev/vfio/N while a device of group N is bound to vfio-pci
(Linux creates the node when the first one binds). Its `run` plays ip, qemu-img and useradd on the tree.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
from pathlib import Path

import attrs

from vmrun.host.mounts import mount_of, parse_mountinfo
from vmrun.host.system import Host, HostCommandError
from vmrun.units import MIB, parse_size

PCI_ROOT = "/sys/devices/pci0000:00"
VENDOR, DEVICE = 0x144D, 0xA808
IFF_TAP, IFF_MULTI_QUEUE, IFF_PERSIST, IFF_NO_PI = 0x2, 0x100, 0x800, 0x1000
IFF_UP = 0x1
PASSWD = "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
GROUP = "root:x:0:\nnogroup:x:65534:\n"


@attrs.frozen
class FakePci:
    address: str
    group: str
    driver: str | None = "nvme"
    device_class: str = "0x010802"
    boot_vga: bool = False
    behind: str | None = None  # the bridge it sits behind, as in sysfs's device tree
    header_type: int | None = None  # config space byte 0x0e; None: what the class implies, one function
    has_config: bool = True  # a recorded or hand-made tree may lack the config file

    @property
    def sysfs_dir(self) -> str:
        return f"{PCI_ROOT}/{self.behind + '/' if self.behind else ''}{self.address}"

    def config(self) -> bytes:
        """The first 64 bytes of config space, as an unprivileged read of sysfs's config file gives them."""
        header_type = self.header_type
        if header_type is None:
            header_type = {"0x0604": 1, "0x0607": 2}.get(self.device_class[:6], 0)
        class_code = int(self.device_class, 16)
        status = 0x0010  # a capabilities list, as PCIe functions have
        header = (VENDOR.to_bytes(2, "little") + DEVICE.to_bytes(2, "little") + bytes(2) + status.to_bytes(2, "little")
                  + bytes([0x01]) + class_code.to_bytes(3, "little") + bytes([0x10, 0, header_type, 0]))
        return header.ljust(64, b"\0")


def put(root: Path, host_path: str, text: str = "") -> None:
    path = root / host_path.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def link(root: Path, host_path: str, target: str) -> None:
    """A relative link, as sysfs makes them."""
    path = root / host_path.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(os.path.relpath(target, os.path.dirname(host_path)))


def build_host_tree(root: Path, devices: list[FakePci], *, ksm_run: str = "0") -> Path:
    for device in devices:
        for name, value in (("vendor", f"{VENDOR:#06x}"), ("device", f"{DEVICE:#06x}"), ("class", device.device_class),
                            ("driver_override", "(null)")):
            put(root, f"{device.sysfs_dir}/{name}", value + "\n")
        if device.has_config:
            (root / device.sysfs_dir.lstrip("/") / "config").write_bytes(device.config())
        if device.boot_vga:
            put(root, f"{device.sysfs_dir}/boot_vga", "1\n")
        link(root, f"/sys/bus/pci/devices/{device.address}", device.sysfs_dir)
        link(root, f"{device.sysfs_dir}/iommu_group", f"/sys/kernel/iommu_groups/{device.group}")
        link(root, f"/sys/kernel/iommu_groups/{device.group}/devices/{device.address}", device.sysfs_dir)
        if device.driver:
            bind(root, device.address, device.driver)
        if device.driver == "vfio-pci":
            put(root, f"/dev/vfio/{device.group}")
    add_driver(root, "vfio-pci")  # loaded, as passthrough needs
    for directory in ("sys/kernel/iommu_groups", "sys/devices/virtual/net", "sys/class/net", "sys/class/block",
                      "sys/block", "sys/module"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    put(root, "/sys/bus/pci/drivers_probe")
    put(root, "/sys/kernel/mm/ksm/run", ksm_run + "\n")
    put(root, "/dev/vfio/vfio")
    put(root, "/dev/net/tun")
    put(root, "/etc/passwd", PASSWD)
    put(root, "/etc/group", GROUP)
    put(root, "/proc/mounts", "sysfs /sys sysfs rw 0 0\n/dev/vda1 / ext4 rw 0 0\n")
    put(root, "/proc/1/mountinfo", "22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n"
                                   "23 22 0:21 / /sys rw,nosuid shared:7 - sysfs sysfs rw\n")
    put(root, "/proc/swaps", "Filename\tType\tSize\tUsed\tPriority\n")
    put(root, "/proc/net/route", "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n")
    put(root, "/proc/net/ipv6_route")
    return root


def add_driver(root: Path, driver: str) -> None:
    for name in ("bind", "unbind"):
        put(root, f"/sys/bus/pci/drivers/{driver}/{name}")


def bind(root: Path, address: str, driver: str) -> None:
    add_driver(root, driver)
    device = (root / "sys/bus/pci/devices" / address).resolve().relative_to(root.resolve())
    link(root, f"/{device}/driver", f"/sys/bus/pci/drivers/{driver}")


def add_net_device(root: Path, name: str, device_dir: str, *, flags: int = 0x1003) -> str:
    """A network interface below device_dir (a PCI function, or /sys/devices/virtual/net)."""
    directory = f"{device_dir}/net/{name}" if device_dir.startswith(PCI_ROOT) else f"{device_dir}/{name}"
    put(root, f"{directory}/flags", f"{flags:#x}\n")
    link(root, f"/sys/class/net/{name}", directory)
    if device_dir.startswith(PCI_ROOT):
        link(root, f"{directory}/device", device_dir)
    return directory


def add_bridge(root: Path, name: str) -> None:
    directory = add_net_device(root, name, "/sys/devices/virtual/net")
    (root / directory.lstrip("/") / "bridge").mkdir()


def add_tap(root: Path, name: str, *, multi_queue: bool, owner: int = -1, group: int = -1) -> None:
    directory = add_net_device(root, name, "/sys/devices/virtual/net", flags=0x1002)
    flags = IFF_TAP | IFF_PERSIST | IFF_NO_PI | (IFF_MULTI_QUEUE if multi_queue else 0)
    for attribute, value in (("tun_flags", f"{flags:#x}"), ("owner", str(owner)), ("group", str(group))):
        put(root, f"{directory}/{attribute}", value + "\n")


def hold_tap(root: Path, tap: str, *, pid: int, command: str) -> None:
    """A process with tap open, as /proc shows one: a file on /dev/net/tun whose fdinfo names the device."""
    put(root, f"/proc/{pid}/comm", command + "\n")
    put(root, f"/proc/{pid}/fdinfo/7", f"pos:\t0\nflags:\t0104002\nmnt_id:\t25\nino:\t1046\niff:\t{tap}\n")
    fd = root / "proc" / str(pid) / "fd" / "7"
    fd.parent.mkdir(parents=True, exist_ok=True)
    fd.symlink_to("/dev/net/tun")  # absolute, as /proc shows it


def attach(root: Path, tap: str, bridge: str) -> None:
    link(root, f"/sys/devices/virtual/net/{tap}/master", f"/sys/devices/virtual/net/{bridge}")
    link(root, f"/sys/devices/virtual/net/{bridge}/lower_{tap}", f"/sys/devices/virtual/net/{tap}")


def add_default_route(root: Path, interface: str) -> None:
    with open(root / "proc/net/route", "a") as routes:
        routes.write(f"{interface}\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\n")


def add_disk(root: Path, name: str, function_dir: str, *, partitions: tuple[str, ...] = ()) -> str:
    """An NVMe namespace below the function (259:0), with its partitions (259:1, ...); returns the disk's
    sysfs directory."""
    disk = f"{function_dir}/nvme/nvme0/{name}"
    put(root, f"{disk}/dev", "259:0\n")
    link(root, f"/sys/block/{name}", disk)
    link(root, f"/sys/class/block/{name}", disk)
    for number, partition in enumerate(partitions, start=1):
        put(root, f"{disk}/{partition}/partition", f"{number}\n")
        put(root, f"{disk}/{partition}/dev", f"259:{number}\n")
        link(root, f"/sys/class/block/{partition}", f"{disk}/{partition}")
    return disk


def add_block_node(root: Path, name: str, major: int, minor: int, *, sysfs_dir: str) -> str:
    """/dev/NAME as a block device node, and /sys/dev/block/MAJOR:MINOR leading to its sysfs directory."""
    node = root / "dev" / name
    node.parent.mkdir(parents=True, exist_ok=True)
    os.mknod(node, stat.S_IFBLK | 0o600, os.makedev(major, minor))
    link(root, f"/sys/dev/block/{major}:{minor}", sysfs_dir)
    put(root, f"{sysfs_dir}/dev", f"{major}:{minor}\n")
    return f"/dev/{name}"


def add_scsi_disk(root: Path, name: str, minor: int) -> str:
    """A SCSI disk (sd) with one partition, as the sd driver lays them out; returns the disk's /dev path."""
    target = f"{PCI_ROOT}/0000:00:1f.2/host0/target0:0:0/0:0:0:0"
    put(root, f"{target}/scsi_device/0:0:0:0/dev", f"21:{minor}\n")
    disk = f"{target}/block/{name}"
    link(root, f"{disk}/device", target)
    add_block_node(root, f"{name}1", 8, minor + 1, sysfs_dir=f"{disk}/{name}1")
    return add_block_node(root, name, 8, minor, sysfs_dir=disk)


def add_device_mapper(root: Path, name: str, mapper_name: str, *, on: str) -> None:
    """dm-N (LVM, dm-crypt; 253:N) built on the block device whose sysfs directory is `on`."""
    directory = f"/sys/devices/virtual/block/{name}"
    put(root, f"{directory}/dm/name", mapper_name + "\n")
    put(root, f"{directory}/dev", f"253:{name.removeprefix('dm-')}\n")
    link(root, f"/sys/class/block/{name}", directory)
    link(root, f"{on}/holders/{name}", directory)


def add_virtio(root: Path, name: str, function_dir: str, driver: str, **attributes: str) -> str:
    """A virtio device (virtioN) below a virtio PCI function, bound to driver; returns its sysfs directory."""
    directory = f"{function_dir}/{name}"
    for attribute, value in attributes.items():
        put(root, f"{directory}/{attribute}", value)
    link(root, f"/sys/bus/virtio/devices/{name}", directory)
    (root / f"sys/bus/virtio/drivers/{driver}").mkdir(parents=True, exist_ok=True)
    link(root, f"{directory}/driver", f"/sys/bus/virtio/drivers/{driver}")
    return directory


def add_virtio_port(root: Path, port: str, virtio_dir: str, *, name: str = "") -> None:
    """A virtio-serial port (vportNpM) of a virtio console device, with the name the VMM gave it."""
    directory = f"{virtio_dir}/virtio-ports/{port}"
    put(root, f"{directory}/name", name + "\n")
    link(root, f"/sys/class/virtio-ports/{port}", directory)


def open_file(root: Path, pid: int, fd: int, target: str) -> None:
    """Process pid holds target open (as /proc/PID/fd/N shows it: a link to the path)."""
    path = root / f"proc/{pid}/fd/{fd}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)


def add_kvm(root: Path, *, modules: list[str], cpu_flags: str) -> None:
    put(root, "/dev/kvm")
    for module in modules:
        (root / "sys/module" / module).mkdir(parents=True, exist_ok=True)
    put(root, "/proc/cpuinfo", f"processor\t: 0\nflags\t\t: {cpu_flags}\n")


def snapshot(root: Path) -> dict[str, str]:
    """Every directory, file (content and owner) and link (target): equal snapshots mean an untouched tree."""
    state = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            state[key] = "-> " + os.readlink(path)
        elif path.is_dir():
            state[key] = "dir"
        else:
            text = path.read_bytes().decode(errors="backslashreplace")  # config space is binary
            state[key] = text + f" [owner {path.stat().st_uid}:{path.stat().st_gid}]"
    return state


def _fail(number: int, host_path: str) -> OSError:
    return OSError(number, os.strerror(number), host_path)


@attrs.frozen
class FakeHost(Host):
    """Host(root) with a fake kernel: sysfs writes and host tools have Linux's effects on the tree.

    Records every write and command, so tests can hold them against the plan.
    """

    natural_drivers: dict[str, str] = attrs.field(factory=dict)  # what probing binds without an override
    fail_on: str | None = None  # a path whose write fails, or the start of a command line that fails
    fail_also_on: str | None = None  # a second one, for a failure whose rollback fails too
    memlock: tuple[int | None, int | None] = (64 * MIB, 64 * MIB)
    writes: list[tuple[str, str]] = attrs.field(factory=list)
    commands: list[tuple[str, ...]] = attrs.field(factory=list)

    def memlock_limits(self) -> tuple[int | None, int | None]:
        return self.memlock

    def wait_for(self, host_path: str | Path, timeout: float) -> bool:
        return self.exists(host_path)  # this kernel acts at once: nothing to wait for

    def socket_refusal(self, directory: Path) -> str | None:
        """This kernel makes no sockets on 9p, as a share from a VMM often cannot (the directory is real,
        its file system is what the tree's /proc/self/mountinfo says)."""
        mount = mount_of(parse_mountinfo(self.read("/proc/self/mountinfo") or ""), str(directory))
        if mount is not None and mount.fstype == "9p":
            return os.strerror(errno.EOPNOTSUPP)
        return super().socket_refusal(directory)

    # --- sysfs ---

    def write(self, host_path: str | Path, value: str) -> None:
        path = str(host_path)
        if path in (self.fail_on, self.fail_also_on):
            raise _fail(errno.EBUSY, path)
        self.writes.append((path, value))
        if path.endswith("/driver_override"):
            super().write(path, (value.strip() or "(null)") + "\n")
        elif path == "/sys/bus/pci/drivers_probe":
            self._probe(value)
        elif path.endswith("/unbind"):
            self._unbind(path, value)
        elif path.endswith("/bind"):
            self._bind(path, value)
        else:
            super().write(path, value)
        self._update_vfio_nodes()

    def _device(self, address: str) -> str:
        return f"/sys/bus/pci/devices/{address}"

    def _probe(self, address: str) -> None:
        if self.link_name(f"{self._device(address)}/driver"):
            return
        override = self.read(f"{self._device(address)}/driver_override")
        driver = override if override != "(null)" else self.natural_drivers.get(address)
        if driver and self.exists(f"/sys/bus/pci/drivers/{driver}"):
            bind(self.root, address, driver)

    def _unbind(self, path: str, address: str) -> None:
        driver = self.resolve(os.path.dirname(path))
        if driver is None or self.link_name(f"{self._device(address)}/driver") != os.path.basename(driver):
            raise _fail(errno.ENODEV, path)
        self.path(f"{self._device(address)}/driver").unlink()

    def _bind(self, path: str, address: str) -> None:
        driver = os.path.basename(os.path.dirname(path))
        if self.link_name(f"{self._device(address)}/driver"):
            raise _fail(errno.EBUSY, path)
        if self.read(f"{self._device(address)}/driver_override") not in ("(null)", driver):
            raise _fail(errno.ENODEV, path)
        bind(self.root, address, driver)

    def _update_vfio_nodes(self) -> None:
        for group in self.listdir("/sys/kernel/iommu_groups"):
            members = self.listdir(f"/sys/kernel/iommu_groups/{group}/devices")
            bound = any(self.link_name(f"{self._device(member)}/driver") == "vfio-pci" for member in members)
            node = self.path(f"/dev/vfio/{group}")
            if bound and not node.exists():
                node.write_text("")
                os.chown(node, 0, 0)
            elif not bound and node.exists():
                node.unlink()

    # --- host tools ---

    def run(self, argv: list[str], *, timeout: float = 60) -> str:
        self.commands.append(tuple(argv))
        if any(failing and " ".join(argv).startswith(failing) for failing in (self.fail_on, self.fail_also_on)):
            raise HostCommandError(f"{argv[0]}: failed, as the test asked")
        match argv:
            case ["ip", "tuntap", "add", "dev", tap, "mode", "tap", *options]:
                self._tuntap_add(tap, multi_queue="multi_queue" in options, user=options[-1])
            case ["ip", "tuntap", "del", "dev", tap, "mode", "tap", *options]:
                self._tuntap_del(tap, multi_queue="multi_queue" in options)
            case ["ip", "link", "set", tap, "master", bridge, "up"]:
                self._attach(tap, bridge)
            case ["ip", "link", "set", tap, "nomaster", *down]:
                self._detach(tap, down=bool(down))
            case ["qemu-img", "create", "-q", "-f", "qcow2", "-b", *_]:
                subprocess.run(argv, check=True)  # an overlay: the real thing, on the test's own files
            case ["qemu-img", "create", "-q", "-f", _, image, size]:
                with open(image, "wb") as file:
                    file.truncate(int(size) if size.isdigit() else parse_size(size))
            case ["useradd", *_, name]:
                with open(self.path("/etc/passwd"), "a") as passwd:
                    passwd.write(f"{name}:x:999:999::/nonexistent:/usr/sbin/nologin\n")
            case ["userdel", name]:
                lines = (self.read("/etc/passwd") or "").splitlines()
                self.path("/etc/passwd").write_text("".join(f"{x}\n" for x in lines if not x.startswith(f"{name}:")))
            case _:
                raise HostCommandError(f"the fake host cannot run {argv}")
        return ""

    def _tuntap_add(self, tap: str, *, multi_queue: bool, user: str) -> None:
        if self.exists(f"/sys/class/net/{tap}"):
            raise HostCommandError("ioctl(TUNSETIFF): Device or resource busy")
        owner = self.user(user)
        add_tap(self.root, tap, multi_queue=multi_queue, owner=owner.uid if owner else -1)

    def _tuntap_del(self, tap: str, *, multi_queue: bool) -> None:
        flags = int(self.read(f"/sys/class/net/{tap}/tun_flags") or "0", 16)
        if not flags or bool(flags & IFF_MULTI_QUEUE) != multi_queue:
            raise HostCommandError("ioctl(TUNSETIFF): Invalid argument")
        if self.link_name(f"/sys/class/net/{tap}/master"):
            self._detach(tap, down=True)
        for entry in sorted(self.path(f"/sys/devices/virtual/net/{tap}").iterdir()):
            entry.unlink()
        self.path(f"/sys/devices/virtual/net/{tap}").rmdir()
        self.path(f"/sys/class/net/{tap}").unlink()

    def _attach(self, tap: str, bridge: str) -> None:
        if not self.exists(f"/sys/class/net/{bridge}/bridge") or not self.exists(f"/sys/class/net/{tap}"):
            raise HostCommandError(f"Cannot find device \"{bridge}\"")
        attach(self.root, tap, bridge)
        self._set_flags(tap, up=True)

    def _detach(self, tap: str, *, down: bool) -> None:
        bridge = self.link_name(f"/sys/class/net/{tap}/master")
        if bridge:
            self.path(f"/sys/devices/virtual/net/{tap}/master").unlink()
            self.path(f"/sys/devices/virtual/net/{bridge}/lower_{tap}").unlink()
        if down:
            self._set_flags(tap, up=False)

    def _set_flags(self, interface: str, *, up: bool) -> None:
        flags = int(self.read(f"/sys/class/net/{interface}/flags") or "0", 16)
        self.path(f"/sys/class/net/{interface}/flags").write_text(f"{flags | IFF_UP if up else flags & ~IFF_UP:#x}\n")
