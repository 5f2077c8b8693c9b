"""Semantic checks: a good spec passes; each mistake is reported at its path, all at once."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from vmrun.errors import SpecError
from vmrun.spec.check import check_spec, load_valid_spec, validate, validate_document
from vmrun.spec.load import parse_spec

from .common import GOOD_SPEC


def good() -> dict[str, Any]:
    return tomllib.loads(GOOD_SPEC)


def check(data: dict[str, Any]) -> list[str]:
    return [str(problem) for problem in check_spec(parse_spec(data, source="t", base=Path("/specs")))]


def test_good_spec_has_no_problems() -> None:
    assert check(good()) == []


def with_(section: str, index: int | None = None, **values: Any) -> dict[str, Any]:
    data = good()
    target = data.setdefault(section, {}) if index is None else data[section][index]
    target.update(values)
    return data


def add(section: str, item: dict[str, Any]) -> dict[str, Any]:
    data = good()
    data.setdefault(section, []).append(item)
    return data


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({**good(), "name": "Web_1"}, "name: 'Web_1' is not a valid VM name (hint: use 1-63 of a-z, 0-9 and '-')"),
        (with_("machine", cpus=0), "machine.cpus: must be at least 1, got 0"),
        (with_("machine", memory="8M"), "machine.memory: must be at least 16M, got 8388608 bytes"),
        (with_("machine", memory="16385K"), "machine.memory: must be a whole number of MiB"),
        (with_("machine", type="q35,accel=kvm"),
         "machine.type: 'q35,accel=kvm' is not a machine type name (hint: e.g. q35 or pc-q35-7.2)"),
        (with_("machine", cpu_model="max,+vmx"),
         "machine.cpu_model: 'max,+vmx' is not a CPU model name (hint: CPU feature flags go in qemu.extra_args)"),
        (with_("machine", accel="tcg", cpu_model="host"),
         'machine.cpu_model: "host" needs KVM, but machine.accel is "tcg" (hint: use "max")'),
    ],
)
def test_machine_and_name(data: dict[str, Any], expected: str) -> None:
    assert check(data) == [expected]


def test_queues_may_not_exceed_cpus() -> None:
    assert check(with_("nics", 0, queues=8)) == [
        "nics[0].queues: 8 queue pairs exceed machine.cpus (4) (hint: more queue pairs than vCPUs bring nothing)"
    ]
    assert check(with_("nics", 0, queues=0)) == ["nics[0].queues: must be at least 1, got 0"]


def test_ids_are_unique_across_device_kinds() -> None:
    data = add("shares", {"id": "root", "path": "/x", "tag": "x"})
    assert check(data) == ["shares[1].id: id 'root' is already used by disks[0].id"]


@pytest.mark.parametrize(
    ("device_id", "expected"),
    [
        ("Root", "disks[0].id: 'Root' is not a valid id (hint: use a-z, then up to 30 of a-z 0-9 _ -)"),
        ("scsi0", "disks[0].id: 'scsi0' is reserved for vmrun's own devices (hint: choose another id)"),
        ("a" * 32, f"disks[0].id: '{'a' * 32}' is not a valid id (hint: use a-z, then up to 30 of a-z 0-9 _ -)"),
    ],
)
def test_bad_ids(device_id: str, expected: str) -> None:
    data = with_("disks", 0, id=device_id)
    assert check(data) == [expected]


@pytest.mark.parametrize(
    ("mac", "expected"),
    [
        ("52:54:00:12:34", "nics[0].mac: '52:54:00:12:34' is not a MAC address (hint: write it as 52:54:00:12:34:56)"),
        ("01:00:5e:00:00:01",
         "nics[0].mac: 01:00:5e:00:00:01 is a multicast address (hint: the first octet must be even)"),
        ("00:00:00:00:00:00", "nics[0].mac: 00:00:00:00:00:00 is not a usable address"),
    ],
)
def test_bad_macs(mac: str, expected: str) -> None:
    assert check(with_("nics", 0, mac=mac)) == [expected]


def test_macs_and_taps_are_unique_case_insensitively() -> None:
    data = with_("nics", 0, mac="52:54:00:AB:CD:EF", tap="tap0")
    data["nics"].append({"id": "net1", "mac": "52:54:00:ab:cd:ef", "tap": "tap0"})
    assert check(data) == [
        "nics[1].tap: tap 'tap0' is already used by nics[0].tap",
        "nics[1].mac: MAC '52:54:00:ab:cd:ef' is already used by nics[0].mac",
    ]


@pytest.mark.parametrize(
    ("key", "name", "expected"),
    [
        ("tap", "a-very-long-tap0", "'a-very-long-tap0' is longer than 15 bytes"),
        ("bridge", "br 0", "'br 0' may not contain '/', ':' or white space"),
        ("tap", "help", "'help' is not a valid interface name"),
    ],
)
def test_interface_names(key: str, name: str, expected: str) -> None:
    assert check(with_("nics", 0, **{key: name})) == [f"nics[0].{key}: {expected}"]


def test_derived_tap_names_are_stable_and_fit() -> None:
    long_name = {**good(), "name": "a-rather-long-vm-name"}
    spec = parse_spec(long_name, source="t", base=Path("/"))
    derived = spec.nics[0].host_tap
    assert len(derived) == 15 and derived == parse_spec(long_name, source="again", base=Path("/")).nics[0].host_tap
    short = parse_spec(good(), source="t", base=Path("/"))
    assert short.nics[0].host_tap == "web.net0"


def test_share_tags() -> None:
    assert check(with_("shares", 0, tag="t" * 32)) == [f"shares[0].tag: '{'t' * 32}' is longer than 31 bytes"]
    data = add("shares", {"id": "other", "path": "/o", "tag": "data"})
    assert check(data) == ["shares[1].tag: mount tag 'data' is already used by shares[0].tag"]


def test_vfio_addresses_are_checked_and_deduplicated_after_normalizing() -> None:
    assert check(with_("vfio", 0, host="1:0.0")) == [
        "vfio[0].host: '1:0.0' is not a PCI address (hint: write it as 0000:01:00.0)"
    ]
    data = add("vfio", {"id": "nvme1", "host": "0000:01:00.0"})
    assert check(data) == ["vfio[1].host: PCI device '0000:01:00.0' is already used by vfio[0].host"]


def test_an_image_written_by_one_disk_is_used_by_no_other_but_readonly_copies_are_fine() -> None:
    data = add("disks", {"id": "again", "path": "root.qcow2"})
    assert check(data) == [
        "disks[1].path: writable disk image '/specs/root.qcow2' is already used by disks[0].path"
    ]
    # qemu: Failed to get shared "write" lock
    assert check(add("disks", {"id": "again", "path": "root.qcow2", "readonly": True})) == [
        "disks[1].path: disk image '/specs/root.qcow2' is already used writable by disks[0].path "
        "(hint: qemu locks an image it writes: make both read-only)"
    ]
    data = with_("disks", 0, readonly=True)
    data["disks"] += [{"id": "again", "path": "root.qcow2", "readonly": True}, {"id": "rw", "path": "root.qcow2"}]
    assert check(data) == ["disks[2].path: writable disk image '/specs/root.qcow2' is already used by disks[0].path"]


def test_disk_option_combinations() -> None:
    data = add("disks", {"id": "lun", "path": "/dev/sdb", "passthrough": True, "format": "qcow2", "size": "1G"})
    data["disks"][0].update(aio="native")
    assert check(data) == [
        'disks[0].aio: aio = "native" needs cache = "none" or "directsync" (O_DIRECT)',
        "disks[1].format: a passthrough disk is a host block device: format must be raw",
        "disks[1].size: vmrun does not create passthrough disks (they are host block devices)",
    ]


@pytest.mark.parametrize(
    ("boot", "expected"),
    [
        ({}, ["boot: nothing to boot (hint: set boot.kernel (direct kernel boot) or boot.disk (a disk id))"]),
        ({"kernel": "k", "disk": "root"},
         ["boot: boot.kernel and boot.disk exclude each other (hint: keep one of them)"]),
        ({"disk": "nope", "initrd": "i"},
         ["boot.initrd: only applies with boot.kernel", "boot.disk: no disk has id 'nope'"]),
        ({"disk": "root", "firmware": "uefi"}, []),
    ],
)
def test_boot(boot: dict[str, str], expected: list[str]) -> None:
    assert check({**good(), "boot": boot}) == expected


def test_hooks_need_the_agent_and_a_command() -> None:
    data = {**good(), "agent": {"enabled": False, "timeout": "0s"}, "post_boot": [{"run": [], "timeout": 0}]}
    assert check(data) == [
        "agent.timeout: must be longer than 0s",
        "post_boot: post_boot hooks run over the guest agent (hint: set agent.enabled = true)",
        'post_boot[0].run: is empty (hint: e.g. run = ["/bin/sh", "-c", "..."])',
        "post_boot[0].timeout: must be longer than 0s",
    ]


def test_host_user_and_qemu_binary() -> None:
    data = {**good(), "host": {"user": "Bad User"}, "qemu": {"binary": ""}}
    assert check(data) == ["host.user: 'Bad User' is not a user name", "qemu.binary: must not be empty"]


def test_qemu_stays_root_only_when_the_spec_says_it_means_it() -> None:
    assert check({**good(), "host": {"user": "root"}}) == [
        'host.user: "root" keeps qemu as root when vmrun runs as root: no privilege drop (hint: name another '
        'user, or set host.allow_root = true to mean it (shares with security_model = "passthrough" need it))'
    ]
    assert check({**good(), "host": {"user": "root", "allow_root": True}}) == []
    assert check({**good(), "host": {"user": "vmrun", "allow_root": True}}) == [
        'host.allow_root: only applies with host.user = "root"'
    ]


def test_validate_reports_every_problem_at_once() -> None:
    data = with_("machine", cpus=2)
    data["nics"][0].update(queues=3, mac="ff:ff:ff:ff:ff:ff")
    data["shares"][0].update(tag="")
    data["vfio"][0].update(host="nope")
    data["name"] = "Bad"
    with pytest.raises(SpecError) as caught:
        validate(parse_spec(data, source="db.toml", base=Path("/")), "db.toml")
    assert [problem.path for problem in caught.value.problems] == [
        "name", "nics[0].queues", "nics[0].mac", "shares[0].tag", "vfio[0].host",
    ]
    assert caught.value.lines()[1].startswith("db.toml: nics[0].queues: 3 queue pairs exceed machine.cpus (2)")


def test_overlays_are_qcow2_on_a_base_nothing_writes() -> None:
    data = add("disks", {"id": "os", "path": "os.qcow2", "base": "root.qcow2", "format": "qcow2"})
    data["disks"].append({"id": "raw", "path": "raw.img", "base": "cloud.img", "format": "raw"})
    data["disks"].append({"id": "lun", "path": "/dev/sdb", "base": "cloud.img", "passthrough": True})
    data["disks"].append({"id": "scratch", "path": "scratch.qcow2", "format": "qcow2", "ephemeral": True})
    assert check(data) == [
        'disks[2].format: an overlay on base is a qcow2 image: format must be "qcow2", not "raw"',
        "disks[3].base: a passthrough disk is a host block device and cannot overlay a base",
        "disks[4].ephemeral: only applies to an overlay (hint: set base, the image it overlays)",
        "disks[1].base: /specs/root.qcow2 is also written as disks[0].path (hint: a base image must never be written)",
    ]


def test_cloud_init_meta_data_and_the_seeds_reserved_id() -> None:
    data = add("disks", {"id": "cidata", "path": "x.raw"})
    data["cloud_init"] = {"user_data": "u.yaml", "meta_data": {"local-hostname": ""}}
    assert check(data) == [
        "disks[1].id: 'cidata' is reserved for vmrun's own devices (hint: choose another id)",
        "cloud_init.meta_data.local-hostname: is empty",
    ]


# --- what qemu would refuse: block node names, vCPUs, memory, sizes, durations ------------------------


def test_disk_ids_whose_block_node_names_exceed_qemus_31_characters() -> None:
    assert check(with_("disks", 0, id="d" * 26)) == []  # "<id>-file" is 31 characters
    assert check(with_("disks", 0, id="d" * 27)) == [
        f"disks[0].id: block node name '{'d' * 27}-file' is longer than qemu's 31 characters "
        "(hint: use a disk id of at most 26 characters)"
    ]
    # A passthrough disk has one node, named after its id.
    assert check(add("disks", {"id": "p" * 31, "path": "/dev/sdb", "passthrough": True})) == []


def test_block_node_names_are_unique_across_disks_and_firmware() -> None:
    data = with_("disks", 0, id="root-file")
    data["disks"].append({"id": "root", "path": "other.raw"})
    assert check(data) == [
        "disks[1].id: block node name 'root-file' is already used by disks[0].id ('root-file') "
        "(hint: rename this disk)"
    ]
    uefi = {**with_("disks", 0, id="pflash0"), "boot": {"disk": "pflash0", "firmware": "uefi"}}
    assert check(uefi) == [
        "disks[0].id: block node name 'pflash0' is already used by the UEFI firmware's drives (hint: rename this disk)"
    ]


@pytest.mark.parametrize(
    ("machine", "expected"),
    [
        ({"cpus": 288}, []),
        ({"cpus": 289}, ["machine.cpus: 289 vCPUs exceed the 288 qemu supports on machine q35"]),
        ({"type": "pc-q35-7.2", "cpus": 289},
         ["machine.cpus: 289 vCPUs exceed the 288 qemu supports on machine pc-q35-7.2"]),
        ({"type": "pc-q35-2.7", "cpus": 256},
         ["machine.cpus: 256 vCPUs exceed the 255 qemu supports on machine pc-q35-2.7"]),
        ({"type": "pc-q35-8.2", "cpus": 1024}, []),
        ({"type": "pc-q35-8.2", "cpus": 1025},
         ["machine.cpus: 1025 vCPUs exceed the 1024 qemu supports on machine pc-q35-8.2"]),
        ({"type": "pc-q35-10.1", "cpus": 4096}, []),
        ({"type": "pc-i440fx-9.2", "cpus": 256},
         ["machine.cpus: 256 vCPUs exceed the 255 qemu supports on machine pc-i440fx-9.2"]),
        ({"type": "pc", "cpus": 256}, ["machine.cpus: 256 vCPUs exceed the 255 qemu supports on machine pc"]),
        ({"type": "virt", "cpus": 256}, ["machine.cpus: 256 vCPUs exceed the 255 qemu supports on machine virt"]),
        ({"cpus": 2**63 - 1},
         [f"machine.cpus: {2**63 - 1} vCPUs exceed the 288 qemu supports on machine q35"]),
        ({"accel": "tcg", "cpus": 256},
         ["machine.cpus: 256 vCPUs exceed the 255 qemu runs under TCG (hint: more need KVM's in-kernel irqchip)"]),
        ({"memory": "16T"}, []),
        ({"memory": "17T"}, ["machine.memory: must be at most 16T, got 17T"]),
        ({"memory": 2**62}, [f"machine.memory: must be at most 16T, got {2**42}T"]),
        ({"memory": -1}, ["machine.memory: must be at least 16M, got -1048576 bytes"]),
        ({"accel": "tcg", "memory": "960G"}, []),
        ({"accel": "tcg", "memory": "961G"},
         ["machine.memory: 961G exceeds the 960G qemu gives a TCG guest (40 physical address bits) "
          "(hint: more needs KVM)"]),
    ],
)
def test_machine_limits(machine: dict[str, Any], expected: list[str]) -> None:
    data = with_("machine", **machine)
    data["nics"][0]["queues"] = 1
    assert check(data) == expected


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ("1T", []),
        (0, "disks[0].size: must be larger than 0"),
        (-1, "disks[0].size: must be larger than 0"),
        ("1025T", "disks[0].size: must be at most 1024T, got 1025T"),
        ("1536K", []),
    ],
)
def test_disk_sizes(size: object, expected: str | list[str]) -> None:
    assert check(with_("disks", 0, size=size)) == ([expected] if isinstance(expected, str) else expected)


@pytest.mark.parametrize(
    ("timeout", "expected"),
    [
        ("24h", []),
        ("1441m", ["must be at most 24h, got 1441m"]),
        (86401, ["must be at most 24h, got 86401s"]),
        ("500ms", []),
        (-5, ["must be longer than 0s"]),
    ],
)
def test_durations_are_bounded(timeout: object, expected: list[str]) -> None:
    data = {**good(), "agent": {"timeout": timeout}, "post_boot": [{"run": ["true"], "timeout": timeout}]}
    assert check(data) == [f"agent.timeout: {e}" for e in expected] + [f"post_boot[0].timeout: {e}" for e in expected]


def test_one_structural_mistake_does_not_hide_the_semantic_ones_of_other_sections(tmp_path: Path) -> None:
    spec = tmp_path / "db.toml"
    spec.write_text(GOOD_SPEC.replace('[machine]\n', '[machine]\naccel = "kvmm"\n')
                    .replace('id = "data"', 'id = "Data"').replace('host = "01:00.0"', 'host = "nope"')
                    + '\n[agent]\ntimeout = "25h"\n')
    with pytest.raises(SpecError) as caught:
        load_valid_spec(spec)
    assert caught.value.lines() == [
        f"{spec}: machine.accel: must be one of auto, kvm, tcg, got 'kvmm'",
        f"{spec}: shares[0].id: 'Data' is not a valid id (hint: use a-z, then up to 30 of a-z 0-9 _ -)",
        f"{spec}: vfio[0].host: 'nope' is not a PCI address (hint: write it as 0000:01:00.0)",
        f"{spec}: agent.timeout: must be at most 24h, got 25h",
    ]


def test_checks_that_need_a_section_which_did_not_structure_stay_silent() -> None:
    # Without a structured name, boot section and machine, derived taps, "nothing to boot" and the queue
    # limit (cpus would read as the default 1) would be mistakes the user did not make.
    data = {**good(), "name": 5, "boot": {"kernel": 1}, "machine": {"cpus": "4"}}
    data["nics"][0]["queues"] = 0
    data["disks"][0]["id"] = "d" * 27
    with pytest.raises(SpecError) as caught:
        validate_document(data, source="t", base=Path("/"))
    assert [str(problem) for problem in caught.value.problems] == [
        "name: expected a string, got an integer (5)",
        "machine.cpus: expected an integer, got a string ('4')",
        "boot.kernel: expected a string, got an integer (1)",
        f"disks[0].id: block node name '{'d' * 27}-file' is longer than qemu's 31 characters "
        "(hint: use a disk id of at most 26 characters)",
        "nics[0].queues: must be at least 1, got 0",
    ]


# --- qemu.extra_args: an escape hatch that may not undo what vmrun guarantees -----------------------------

PRIVILEGE_HINT = " (hint: host.user sets who qemu runs as)"
MONITOR = "would open a second monitor, which controls qemu as vmrun's does (hint: vmrun status, exec and console " \
          "reach the VM through vmrun's own sockets)"
DEVICE = "passes a host device through behind preflight's back (hint: declare it in the spec ([[vfio]] for PCI " \
         "passthrough), where preflight checks it and down gives it back)"
NETWORK = "uses a host network interface behind preflight's back (hint: declare the NIC in [[nics]] (tap and " \
          "bridge), where preflight creates and undoes it)"


@pytest.mark.parametrize(
    ("extra_args", "expected"),
    [
        (["-runas", "root"], f"[0]: -runas would undo vmrun's privilege drop{PRIVILEGE_HINT}"),
        (["-S", "--run-with", "user=root"], f"[1]: -run-with would undo vmrun's privilege drop{PRIVILEGE_HINT}"),
        (["-chroot=/"], f"[0]: -chroot would undo vmrun's privilege drop{PRIVILEGE_HINT}"),
        (["-sandbox", "off"], "[0]: -sandbox would replace the seccomp sandbox vmrun gives qemu"),
        (["-device", "vfio-pci,host=0000:01:00.0"], f"[1]: -device vfio-pci {DEVICE}"),
        (["-device", "driver=vfio-pci,host=01:00.0"], f"[1]: -device vfio-pci {DEVICE}"),
        (["-device", "e1000,driver=vfio-pci-nohotplug"], f"[1]: -device vfio-pci-nohotplug {DEVICE}"),
        (["-device", '{"driver": "vfio-pci", "host": "01:00.0"}'], f"[1]: -device vfio-pci {DEVICE}"),
        (["--device", "usb-host,hostbus=1,hostaddr=2"], f"[1]: -device usb-host {DEVICE}"),
        (["-device=virtio-input-host-pci,evdev=/dev/input/event0"], f"[0]: -device virtio-input-host-pci {DEVICE}"),
        (["-netdev", "tap,id=t0,ifname=eth0"], f"[1]: -netdev tap {NETWORK}"),
        (["-netdev", "id=b0,type=bridge,br=br0"], f"[1]: -netdev bridge {NETWORK}"),
        (["-netdev", '{"type": "vhost-vdpa", "id": "v0"}'], f"[1]: -netdev vhost-vdpa {NETWORK}"),
        (["-net", "tap"], f"[1]: -net tap {NETWORK}"),
        (["--nic", "tap,script=/tmp/up"], f"[1]: -nic tap {NETWORK}"),
        (["-qmp", "tcp:0.0.0.0:4444,server=on,wait=off"], f"[0]: -qmp {MONITOR}"),
        (["-qmp-pretty", "stdio"], f"[0]: -qmp-pretty {MONITOR}"),
        (["--monitor", "stdio"], f"[0]: -monitor {MONITOR}"),
        (["-mon", "chardev=c0,mode=control"], f"[0]: -mon {MONITOR}"),
        (["-serial", "mon:unix:/tmp/s,server=on"], f"[1]: -serial mon:... {MONITOR}"),
        (["-daemonize"], "[0]: -daemonize is vmrun's: it starts qemu daemonized itself"),
        (["-pidfile", "/etc/passwd"],
         "[0]: -pidfile is vmrun's: it finds its qemu by the pidfile in the run directory"),
        (["-name", "guest=db,process=vmrun-db"],
         "[0]: -name is vmrun's: it tells its qemu by the name it gives it "
         "(hint: the spec's name is the guest's name)"),
        (["-readconfig", "devices.cfg"],
         "[0]: -readconfig would add devices and backends vmrun cannot see (hint: write them in extra_args)"),
        (["-set", "device.nvme0.driver=vfio-pci"], "[0]: -set would change options vmrun gave, out of its sight"),
    ],
)
def test_extra_args_that_undo_vmruns_guarantees_are_refused_at_their_element(
    extra_args: list[str], expected: str
) -> None:
    assert check({**good(), "qemu": {"extra_args": extra_args}}) == [f"qemu.extra_args{expected}"]


@pytest.mark.parametrize(
    "extra_args",
    [
        ["-device", "virtio-rng-pci"],
        ["-device", "e1000,netdev=tap,id=vfio"],  # ids named like the refused, drivers that are not
        ["-netdev", "user,id=tap", "-device", "virtio-net-pci,netdev=tap"],
        ["-fsdev", "local,id=f0,path=/srv,security_model=none", "-device", "virtio-9p-pci,fsdev=f0,mount_tag=t"],
        ["-chardev", "socket,id=c0,path=/tmp/console.sock,server=on,wait=off", "-device", "isa-serial,chardev=c0"],
        ["-global", "kvm-pit.lost_tick_policy=discard", "-rtc", "base=utc"],
        ["-append-not-an-option"],  # qemu refuses unknown options itself
    ],
)
def test_other_extra_args_pass(extra_args: list[str]) -> None:
    assert check({**good(), "qemu": {"extra_args": extra_args}}) == []


def test_every_refused_extra_arg_is_reported_at_once() -> None:
    data = {**good(), "qemu": {"extra_args": ["-runas", "root", "-device", "vfio-pci,host=02:00.0", "-daemonize"]}}
    assert [line.split(":")[0] for line in check(data)] == [
        "qemu.extra_args[0]", "qemu.extra_args[3]", "qemu.extra_args[4]",
    ]


def test_tuning_mistakes_are_all_reported_at_their_machine_fields() -> None:
    data = with_("machine", cpus=4, memory="1025M", hugepages="2M", vcpu_pin=[0, 1, -1], emulator_pin=[0, 0, 9000],
                 numa_node=-1)
    assert check(data) == [
        "machine.hugepages: machine.memory (1025M) is not a whole number of 2M pages (hint: make memory a "
        "multiple of 2M)",
        "machine.vcpu_pin: has 3 host CPUs for 4 vCPUs (machine.cpus) (hint: one host CPU per vCPU, in vCPU order)",
        "machine.vcpu_pin[2]: -1 is not a host CPU number (hint: 0 to 8191)",
        "machine.emulator_pin: names host CPU 0 twice",
        "machine.emulator_pin[2]: 9000 is not a host CPU number (hint: 0 to 8191)",
        "machine.numa_node: -1 is not a NUMA node number (hint: 0 to 1023)",
    ]


def test_a_1g_page_size_needs_whole_gibibytes_and_an_unknown_size_is_refused() -> None:
    assert check(with_("machine", memory="1536M", hugepages="1G")) == [
        "machine.hugepages: machine.memory (1536M) is not a whole number of 1G pages (hint: make memory a multiple "
        "of 1G)"]
    with pytest.raises(SpecError, match=r"machine.hugepages: must be one of 2M, 1G, got '4M'"):
        validate_document(with_("machine", hugepages="4M"), source="t", base=Path("/specs"))


def test_tuned_machine_passes_and_vcpus_may_share_a_host_cpu() -> None:
    data = with_("machine", cpus=4, memory="4G", hugepages="1G", vcpu_pin=[1, 1, 2, 3], emulator_pin=[0],
                 io_thread=True, numa_node=0)
    assert check(data) == []
    assert check(with_("machine", emulator_pin=[])) == [
        "machine.emulator_pin: is empty: qemu's threads would have no CPU to run on (hint: name at least one host "
        "CPU, or leave emulator_pin out)"]


def test_an_io_thread_needs_the_disk_controller_it_is_for() -> None:
    data = with_("machine", io_thread=True)
    del data["disks"]
    data["boot"] = {"kernel": "vmlinuz"}
    assert check(data) == [
        "machine.io_thread: there is no disk: the virtio-scsi controller it is for does not exist"]
