"""Render: golden argv for the checked-in specs, escaping, and the multiqueue numbers."""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path

import attrs
import pytest

from vmrun.host.facts import HostFacts, PrivilegeDrop, choose_accel, choose_privilege_drop
from vmrun.host.system import parse_qemu_help
from vmrun.qemu.render import qemu_opt, render
from vmrun.spec.check import validate
from vmrun.spec.load import load_spec, parse_spec
from vmrun.spec.model import Accel

from .common import GOLDEN_FACTS, GOOD_SPEC, REPO, SPECS, golden_paths
from .qemu_help import HELP_7_2, HELP_8_2, HELP_9_0, HELP_9_1, HELP_10_0, HELP_USER_ON_CONTINUATION_LINE

GOLDEN = Path(__file__).parent / "golden"


def render_text(text: str, facts: HostFacts = GOLDEN_FACTS) -> list[str]:
    spec = validate(parse_spec(tomllib.loads(text), source="t", base=Path("/specs")), "t")
    return render(spec, facts, golden_paths(spec.name))


def option(argv: list[str], flag: str, startswith: str) -> str:
    """The value of the one `flag` whose value starts with `startswith`."""
    [value] = [argv[i + 1] for i, arg in enumerate(argv) if arg == flag and argv[i + 1].startswith(startswith)]
    return value


@pytest.mark.parametrize("spec_file", sorted(SPECS.glob("*.toml")), ids=lambda path: path.stem)
def test_golden_argv(spec_file: Path) -> None:
    spec = validate(load_spec(spec_file), spec_file)
    argv = [arg.replace(str(REPO), "{repo}") for arg in render(spec, GOLDEN_FACTS, golden_paths(spec.name))]
    golden = GOLDEN / f"{spec_file.stem}.json"
    if os.environ.get("VMRUN_UPDATE_GOLDEN"):
        golden.write_text(json.dumps(argv, indent=1) + "\n")
    assert argv == json.loads(golden.read_text())


def test_db_has_four_queue_pairs_and_a_lun_per_disk_on_one_controller() -> None:
    spec = load_spec(SPECS / "db.toml")
    argv = render(spec, GOLDEN_FACTS, golden_paths("db"))
    assert option(argv, "-netdev", "tap") == (
        "tap,id=net0,ifname=vmtap0,script=no,downscript=no,vhost=off,queues=4"
    )
    assert option(argv, "-device", "virtio-net-pci") == (
        "virtio-net-pci,netdev=net0,id=net0,mac=52:54:00:12:34:56,mq=on,vectors=10"
    )
    controllers = [arg for arg in argv if arg.startswith("virtio-scsi-pci")]
    luns = [arg for arg in argv if arg.startswith("scsi-hd,bus=scsi0.0")]
    assert controllers == ["virtio-scsi-pci,id=scsi0"] and len(luns) == len(spec.disks) == 2
    assert "bootindex=0" in luns[0] and "bootindex" not in luns[1]


def test_single_queue_nic_has_no_multiqueue_options() -> None:
    argv = render_text(GOOD_SPEC.replace("queues = 4", "queues = 1"))
    assert option(argv, "-netdev", "tap") == "tap,id=net0,ifname=web.net0,script=no,downscript=no,vhost=off"
    assert "mq=" not in option(argv, "-device", "virtio-net-pci")


def test_vhost_follows_the_spec_and_the_host() -> None:
    with_vhost_net = HostFacts(kvm_usable=True, kvm_reason="kvm_intel loaded", vhost_net=True)
    assert "vhost=on" in option(render_text(GOOD_SPEC, with_vhost_net), "-netdev", "tap")
    assert "vhost=off" in option(render_text(GOOD_SPEC), "-netdev", "tap")
    forced_off = GOOD_SPEC.replace("queues = 4", "queues = 4\nvhost = false")
    assert "vhost=off" in option(render_text(forced_off, with_vhost_net), "-netdev", "tap")


@pytest.mark.parametrize(
    ("section", "key", "value", "flag", "expected"),
    [
        ("disks", "path", "/var/lib/a,b/root,file=/etc/shadow", "-blockdev",
         "driver=file,filename=/var/lib/a,,b/root,,file=/etc/shadow,node-name=root-file,aio=threads"),
        ("shares", "path", "/srv/x,security_model=passthrough", "-fsdev",
         "local,id=data,path=/srv/x,,security_model=passthrough,security_model=mapped-xattr"),
        ("shares", "tag", "a,b", "-device", "virtio-9p-pci,fsdev=data,mount_tag=a,,b,id=data"),
        ("nics", "tap", "t,vhost=on", "-netdev", "tap,id=net0,ifname=t,,vhost=on,script=no"),
    ],
)
def test_commas_in_user_strings_are_escaped(section: str, key: str, value: str, flag: str, expected: str) -> None:
    data = tomllib.loads(GOOD_SPEC)
    data[section][0][key] = value
    spec = validate(parse_spec(data, source="t", base=Path("/specs")), "t")
    argv = render(spec, GOLDEN_FACTS, golden_paths(spec.name))
    assert option(argv, flag, expected.split(",")[0]).startswith(expected)


def test_qemu_opt_refuses_control_characters_and_formats_booleans() -> None:
    assert qemu_opt("socket", {"server": True, "wait": False, "skip": None}) == "socket,server=on,wait=off"
    with pytest.raises(ValueError, match="control character"):
        qemu_opt(None, {"path": "/a\nb"})


def test_extra_args_come_last_verbatim() -> None:
    argv = render_text(GOOD_SPEC + '\n[qemu]\nextra_args = ["-device", "virtio-rng-pci,id=rng0"]\n')
    assert argv[-2:] == ["-device", "virtio-rng-pci,id=rng0"]


def test_accelerator_choice_is_explained() -> None:
    spec = parse_spec(tomllib.loads(GOOD_SPEC), source="t", base=Path("/"))
    no_kvm = HostFacts(kvm_usable=False, kvm_reason="no /dev/kvm on this host")
    kvm = HostFacts(kvm_usable=True, kvm_reason="/dev/kvm is usable (kvm_amd loaded)")
    assert choose_accel(spec, no_kvm).accel is Accel.TCG
    assert choose_accel(spec, no_kvm).reason == "auto: no /dev/kvm on this host"
    assert choose_accel(spec, kvm).accel is Accel.KVM
    argv = render(spec, kvm, golden_paths("web"))
    assert argv[argv.index("-accel") + 1] == "kvm" and argv[argv.index("-cpu") + 1] == "host"


PRIVILEGE_OPTIONS = ("-runas", "-run-with")


def privilege_args(argv: list[str]) -> list[str]:
    return [arg for i, arg in enumerate(argv) if arg in PRIVILEGE_OPTIONS or argv[i - 1] in PRIVILEGE_OPTIONS]


@pytest.mark.parametrize(("help_text", "expected"), [
    (HELP_7_2, ["-runas", "vmrun"]),
    (HELP_8_2, ["-runas", "vmrun"]),  # -run-with, but without user=: `-run-with user=` would be refused
    (HELP_9_0, ["-runas", "vmrun"]),
    (HELP_9_1, ["-run-with", "user=vmrun"]),  # -runas still there, but deprecated
    (HELP_10_0, ["-run-with", "user=vmrun"]),  # no -runas
    (HELP_USER_ON_CONTINUATION_LINE, ["-run-with", "user=vmrun"]),
], ids=["7.2", "8.2", "9.0", "9.1", "10.0", "user-on-second-line"])
def test_privilege_drop_follows_what_qemu_help_offers(help_text: str, expected: list[str]) -> None:
    facts = attrs.evolve(GOLDEN_FACTS, privilege_drop=choose_privilege_drop(parse_qemu_help(help_text)))
    assert privilege_args(render_text(GOOD_SPEC, facts)) == expected


def test_no_privilege_option_without_root_or_without_a_way_to_drop() -> None:
    assert privilege_args(render_text(GOOD_SPEC, HostFacts(kvm_usable=False, kvm_reason="x"))) == []
    neither = attrs.evolve(GOLDEN_FACTS, privilege_drop=PrivilegeDrop.IMPOSSIBLE)  # preflight refuses this qemu
    assert privilege_args(render_text(GOOD_SPEC, neither)) == []


def test_a_spec_that_keeps_qemu_root_gets_no_privilege_option() -> None:
    assert privilege_args(render_text(GOOD_SPEC + '[host]\nuser = "root"\nallow_root = true\n')) == []


def test_cloud_init_seed_is_a_read_only_cd_on_the_controller_even_without_disks() -> None:
    text = GOOD_SPEC.split("[[disks]]")[0] + '[cloud_init]\nuser_data = "u.yaml"\n'
    argv = render_text(text)
    assert option(argv, "-device", "virtio-scsi-pci") == "virtio-scsi-pci,id=scsi0"
    assert option(argv, "-blockdev", "driver=file") == (
        "driver=file,filename=/var/lib/vmrun/web/seed.iso,node-name=cidata,read-only=on")
    assert option(argv, "-device", "scsi-cd") == "scsi-cd,bus=scsi0.0,channel=0,scsi-id=0,lun=0,drive=cidata,id=cidata"


def test_an_overlays_base_is_never_named_so_qemu_opens_it_read_only_from_the_header() -> None:
    text = GOOD_SPEC.replace('path = "root.qcow2"', 'path = "root.qcow2"\nbase = "/images/cloud,1.qcow2"')
    argv = render_text(text + '[cloud_init]\nuser_data = "u.yaml"\n')
    assert not any("cloud" in arg for arg in argv)
    assert option(argv, "-blockdev", "driver=qcow2") == "driver=qcow2,file=root-file,node-name=root"
    # The seed comes after the disks, on the next SCSI target.
    assert option(argv, "-device", "scsi-cd").startswith("scsi-cd,bus=scsi0.0,channel=0,scsi-id=1,")


TUNED = GOOD_SPEC.replace("[machine]\n", '[machine]\nhugepages = "2M"\nvcpu_pin = [3, 2, 1, 0]\nemulator_pin = [0, 1]\n'
                          "io_thread = true\n")


def test_huge_pages_back_guest_ram_preallocated_for_vfio_and_pinning_starts_qemu_paused() -> None:
    argv = render_text(TUNED)
    assert option(argv, "-machine", "type=") == "type=q35,memory-backend=ram0"
    assert option(argv, "-object", "memory-backend") == \
        "memory-backend-memfd,id=ram0,size=2048M,hugetlb=on,hugetlbsize=2M,prealloc=on"
    assert "-S" in argv
    assert option(argv, "-name", "guest=").endswith(",debug-threads=on")
    assert option(argv, "-object", "iothread") == "iothread,id=io0"
    assert option(argv, "-device", "virtio-scsi-pci") == "virtio-scsi-pci,id=scsi0,iothread=io0"


def test_without_vfio_huge_pages_fault_in_at_first_touch_and_numa_node_binds_ram() -> None:
    spec = TUNED.replace('hugepages = "2M"', 'hugepages = "1G"\nnuma_node = 1').split("[[vfio]]")[0]
    assert option(render_text(spec), "-object", "memory-backend") == (
        "memory-backend-memfd,id=ram0,size=2048M,hugetlb=on,hugetlbsize=1G,policy=bind,host-nodes=1")
    plain_ram = GOOD_SPEC.replace("[machine]\n", "[machine]\nnuma_node = 0\n")
    argv = render_text(plain_ram)
    assert option(argv, "-object", "memory-backend") == "memory-backend-ram,id=ram0,size=2048M,policy=bind,host-nodes=0"
    assert "-S" not in argv


def test_untuned_spec_runs_as_before() -> None:
    argv = render_text(GOOD_SPEC)
    assert "-S" not in argv and "-object" not in argv
    assert option(argv, "-machine", "type=") == "type=q35"


def test_db_specs_tuning_comments_once_enabled_are_a_valid_tuned_spec() -> None:
    tuning_keys = ("hugepages", "vcpu_pin", "emulator_pin", "io_thread", "numa_node")
    text = "\n".join(line.removeprefix("# ") if line.startswith(tuple(f"# {key} =" for key in tuning_keys)) else line
                     for line in (SPECS / "db.toml").read_text().splitlines())
    spec = validate(parse_spec(tomllib.loads(text), source="db", base=SPECS), "db")
    assert (spec.machine.hugepages, spec.machine.vcpu_pin, spec.machine.io_thread) == ("1G", (2, 3, 4, 5), True)
    assert "-S" in render(spec, GOLDEN_FACTS, golden_paths("db"))
