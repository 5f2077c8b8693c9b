"""The host layer: what lives under --host-root, users, links, host tools, probes."""

from __future__ import annotations

import os
import resource
import stat
import subprocess
import time
from pathlib import Path

import pytest

from vmrun.host.facts import PrivilegeDrop, choose_privilege_drop
from vmrun.host.system import Host, HostCommandError, QemuCapabilities, User, parse_qemu_help

from .fakehost import put
from .qemu_help import HELP_7_2, HELP_8_2, HELP_9_0, HELP_9_1, HELP_10_0, HELP_USER_ON_CONTINUATION_LINE

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def test_fake_root_holds_sysfs_dev_proc_and_users_but_not_the_specs_files(tmp_path: Path) -> None:
    host = Host(root=tmp_path)
    assert host.path("/sys/bus/pci/drivers_probe") == tmp_path / "sys/bus/pci/drivers_probe"
    assert host.path("/dev/vfio/12") == tmp_path / "dev/vfio/12"
    assert host.path("/proc/mounts") == tmp_path / "proc/mounts"
    assert host.path("/etc/passwd") == tmp_path / "etc/passwd"
    # Disk images, shares and kernels are the user's: a host tree does not hold them.
    assert host.path("/etc/vmrun/vmlinuz") == Path("/etc/vmrun/vmlinuz")
    assert host.path(Path("/srv/data")) == Path("/srv/data")
    assert Host().path("/sys/kernel") == Path("/sys/kernel")


def test_fake_resolve_gives_host_paths_and_stops_at_the_tree_edge(tmp_path: Path) -> None:
    put(tmp_path, "/sys/devices/pci0000:00/0000:01:00.0/class", "0x010802\n")
    (tmp_path / "sys/bus/pci/devices").mkdir(parents=True)
    (tmp_path / "sys/bus/pci/devices/0000:01:00.0").symlink_to("../../../devices/pci0000:00/0000:01:00.0")
    (tmp_path / "sys/escape").symlink_to("/etc")
    host = Host(root=tmp_path)
    assert host.resolve("/sys/bus/pci/devices/0000:01:00.0") == "/sys/devices/pci0000:00/0000:01:00.0"
    assert host.link_name("/sys/bus/pci/devices/0000:01:00.0") == "0000:01:00.0"
    assert host.resolve("/sys/escape") is None
    assert host.resolve("/sys/missing") is None
    assert host.resolve(tmp_path / "sys") == str(tmp_path.resolve() / "sys")  # a user's path, as it is


def test_fake_users_come_from_the_trees_database_else_from_this_machine(tmp_path: Path) -> None:
    put(tmp_path, "/etc/passwd", "root:x:0:0::/root:/bin/sh\nvmrun:x:999:990::/nonexistent:/usr/sbin/nologin\n")
    put(tmp_path, "/etc/group", "root:x:0:\nvmrun:x:990:\nkvm:x:104:vmrun,other\n")
    host = Host(root=tmp_path)
    vmrun = host.user("vmrun")
    assert vmrun == User("vmrun", 999, 990)
    assert host.group_ids(vmrun) == {990, 104}
    assert host.user("nobody") is None  # this machine has one; the recorded host does not
    assert Host(root=tmp_path / "no-etc").user("root") == User("root", 0, 0)


def test_kind_tells_files_directories_and_block_devices(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    host = Host(root=tmp_path)
    assert [host.kind(tmp_path / name) for name in ("file", ".", "missing")] == ["file", "directory", None]
    if os.geteuid() == 0:
        (tmp_path / "dev").mkdir()
        os.mknod(tmp_path / "dev/sdz", stat.S_IFBLK | 0o600, os.makedev(7, 200))
        assert host.kind("/dev/sdz") == "block device"


@needs_root
def test_chown_by_name_and_back_to_the_recorded_ids(tmp_path: Path) -> None:
    put(tmp_path, "/dev/vfio/12")
    put(tmp_path, "/etc/passwd", "qemu:x:4242:4343::/:/bin/false\n")
    host = Host(root=tmp_path)
    before = host.ownership("/dev/vfio/12")
    host.chown("/dev/vfio/12", "qemu")
    assert host.ownership("/dev/vfio/12") == "4242:4343"
    host.chown("/dev/vfio/12", before)
    assert host.ownership("/dev/vfio/12") == before
    with pytest.raises(HostCommandError, match="no user 'ghost'"):
        host.chown("/dev/vfio/12", "ghost")


def test_fake_root_never_runs_host_tools(tmp_path: Path) -> None:
    with pytest.raises(HostCommandError, match="not run against the host tree"):
        Host(root=tmp_path).run(["touch", str(tmp_path / "touched")])
    assert not (tmp_path / "touched").exists()


def test_host_tools_fail_with_their_own_message() -> None:
    with pytest.raises(HostCommandError, match="^no such bridge$"):
        Host().run(["sh", "-c", "echo no such bridge >&2; exit 3"])
    with pytest.raises(HostCommandError, match="exited with status 1"):
        Host().run(["false"])
    with pytest.raises(HostCommandError, match="no-such-tool"):
        Host().run(["no-such-tool"])
    assert Host().run(["echo", "ok"]) == "ok\n"


def test_wait_for_a_device_node_is_bounded(tmp_path: Path) -> None:
    host = Host(root=tmp_path)
    started = time.monotonic()
    assert not host.wait_for("/dev/vfio/12", 0.1)
    assert time.monotonic() - started < 1
    put(tmp_path, "/dev/vfio/12")
    assert host.wait_for("/dev/vfio/12", 0.1)


def test_xattr_probe_leaves_nothing_behind(tmp_path: Path) -> None:
    host = Host()
    assert host.supports_xattrs(tmp_path)
    assert os.listxattr(tmp_path) == [] and list(tmp_path.iterdir()) == []
    assert not host.supports_xattrs(Path("/sys/kernel"))  # sysfs stores no user xattrs


def test_memlock_limits_are_this_process_s() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    unlimited = resource.RLIM_INFINITY
    assert Host().memlock_limits() == (None if soft == unlimited else soft, None if hard == unlimited else hard)


@pytest.mark.parametrize(("help_text", "expected"), [
    (HELP_7_2, QemuCapabilities("7.2.22", has_run_with_user=False, has_runas=True, has_sandbox=True)),
    (HELP_8_2, QemuCapabilities("8.2.0", has_run_with_user=False, has_runas=True, has_sandbox=True)),
    (HELP_9_0, QemuCapabilities("9.0.0", has_run_with_user=False, has_runas=True, has_sandbox=True)),
    (HELP_9_1, QemuCapabilities("9.1.0", has_run_with_user=True, has_runas=True, has_sandbox=True)),
    (HELP_10_0, QemuCapabilities("10.0.0", has_run_with_user=True, has_runas=False, has_sandbox=True)),
    (HELP_USER_ON_CONTINUATION_LINE,
     QemuCapabilities("unknown", has_run_with_user=True, has_runas=False, has_sandbox=True)),
], ids=["7.2", "8.2", "9.0", "9.1", "10.0", "user-on-second-line"])
def test_qemu_help_of_each_release_tells_how_to_drop_privileges(help_text: str, expected: QemuCapabilities) -> None:
    assert parse_qemu_help(help_text) == expected


def test_user_elsewhere_in_the_help_is_not_run_with_s() -> None:
    # 9.0's -run-with, followed by an option whose text mentions user=: that is not -run-with's.
    help_text = HELP_9_0 + "-netdev user,id=str[,ipv4=on|off]\n                user=... is not this\n"
    assert not parse_qemu_help(help_text).has_run_with_user


def test_real_qemu_accepts_the_privilege_option_vmrun_picks_for_it(tmp_path: Path) -> None:
    """Real qemu is the oracle: the option chosen from its help is parsed (the unknown user is what it
    refuses); on a qemu without -run-with user=, that option is refused as such."""
    program = Host.find_program("qemu-system-x86_64")
    assert program is not None
    capabilities = Host().qemu_capabilities(program, cache_dir=tmp_path)
    assert capabilities is not None

    def qemu_with(*privilege_args: str) -> str:
        argv = [str(program), "-machine", "none", "-nodefaults", "-display", "none", *privilege_args]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        assert result.returncode == 1
        return result.stderr

    picked = {PrivilegeDrop.RUN_WITH_USER: ["-run-with", "user=vmrun-no-such-user"],
              PrivilegeDrop.RUNAS: ["-runas", "vmrun-no-such-user"]}[choose_privilege_drop(capabilities)]
    assert 'User "vmrun-no-such-user" doesn\'t exist' in qemu_with(*picked)
    if not capabilities.has_run_with_user:
        refused = qemu_with("-run-with", "user=vmrun-no-such-user")
        assert "-run-with: invalid option" in refused or "Invalid parameter 'user'" in refused
