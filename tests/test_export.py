"""Export: the libvirt domain means the same VM (read back from the parsed XML), the unit runs vmrun."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from vmrun.export.libvirt import QEMU_NAMESPACE, libvirt_domain, scsi_disk_name
from vmrun.export.systemd import systemd_unit
from vmrun.spec.check import validate
from vmrun.spec.load import load_spec, parse_spec
from vmrun.spec.model import Accel
from vmrun.state.locations import RunPaths

from .common import GOOD_SPEC, REPO, SPECS

GOLDEN = Path(__file__).parent / "golden"
SEED = Path("/var/lib/vmrun/web/seed.iso")
PATHS = RunPaths(run_dir=Path("/run/vmrun/tiny"), state_dir=Path("/var/lib/vmrun/tiny"))


def domain_of(spec_file: Path, accel: Accel = Accel.TCG) -> ET.Element:
    spec = validate(load_spec(spec_file), spec_file)
    return ET.fromstring(libvirt_domain(spec, accel=accel, vhost_net=False, seed=SEED).text)


def test_db_golden_xml() -> None:
    spec = load_spec(SPECS / "db.toml")
    text = libvirt_domain(spec, accel=Accel.KVM, vhost_net=True, seed=SEED).text
    golden = GOLDEN / "db.libvirt.xml"
    if os.environ.get("VMRUN_UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text()


def test_db_domain_fields() -> None:
    domain = domain_of(SPECS / "db.toml", Accel.KVM)
    assert domain.get("type") == "kvm"
    assert domain.findtext("memory") == str(8 * 1024 * 1024) and domain.find("memory").get("unit") == "KiB"  # type: ignore[union-attr]
    assert domain.findtext("vcpu") == "4"
    assert domain.find("cpu").get("mode") == "host-passthrough"  # type: ignore[union-attr]
    assert domain.find("os").get("firmware") == "efi"  # type: ignore[union-attr]
    controllers = domain.findall("devices/controller")
    assert [(controller.get("type"), controller.get("model")) for controller in controllers] == [
        ("scsi", "virtio-scsi"), ("usb", "none"),  # -nodefaults: no USB unless the spec asks
    ]
    assert domain.find("devices/memballoon").get("model") == "none"  # type: ignore[union-attr]
    disks = domain.findall("devices/disk")
    assert [disk.find("target").get("bus") for disk in disks] == ["scsi", "scsi"]  # type: ignore[union-attr]
    root_driver = disks[0].find("driver")
    assert root_driver is not None and root_driver.attrib == {
        "name": "qemu", "type": "qcow2", "cache": "none", "io": "native", "discard": "unmap",
    }
    assert disks[0].find("boot").get("order") == "1" and disks[1].find("boot") is None  # type: ignore[union-attr]
    [nic] = domain.findall("devices/interface")
    assert nic.get("type") == "bridge" and nic.find("source").get("bridge") == "br0"  # type: ignore[union-attr]
    assert nic.find("driver").attrib == {"name": "qemu", "queues": "4"}  # type: ignore[union-attr]
    assert nic.find("mac").get("address") == "52:54:00:12:34:56"  # type: ignore[union-attr]
    [share] = domain.findall("devices/filesystem")
    assert share.get("accessmode") == "mapped" and share.find("readonly") is not None
    assert share.find("target").get("dir") == "dbconf"  # type: ignore[union-attr]
    [hostdev] = domain.findall("devices/hostdev")
    address = hostdev.find("source/address")
    assert hostdev.get("managed") == "yes" and address is not None
    assert address.attrib == {"domain": "0x0000", "bus": "0x01", "slot": "0x00", "function": "0x0"}
    [channel] = domain.findall("devices/channel")
    assert channel.find("target").get("name") == "org.qemu.guest_agent.0"  # type: ignore[union-attr]
    assert domain.find("memoryBacking") is None  # ksm = true: pages stay shareable


def test_tiny_domain_uses_direct_kernel_boot_a_tap_and_no_page_sharing() -> None:
    domain = domain_of(SPECS / "tiny.toml")
    assert domain.get("type") == "qemu" and domain.find("cpu").get("mode") == "maximum"  # type: ignore[union-attr]
    assert domain.findtext("os/kernel") == str(REPO / "images/tiny/vmlinuz")
    assert domain.findtext("os/cmdline") == "console=ttyS0 quiet"
    [nic] = domain.findall("devices/interface")
    assert nic.get("type") == "ethernet"
    # libvirt creates the tap under vmrun's name (and deletes it), as vmrun's preflight would.
    assert nic.find("target").attrib == {"dev": "tiny.net0"}  # type: ignore[union-attr]
    assert domain.find("memoryBacking/nosharepages") is not None


def test_domain_uuid_is_stable_per_name_so_a_new_export_redefines_the_same_domain() -> None:
    data = tomllib.loads(GOOD_SPEC)

    def uuid_of(name: str, memory: str) -> str | None:
        machine = {**data["machine"], "memory": memory}
        spec = validate(parse_spec({**data, "name": name, "machine": machine}, source="t", base=Path("/")), "t")
        return ET.fromstring(libvirt_domain(spec, accel=Accel.TCG, vhost_net=False, seed=SEED).text).findtext("uuid")

    assert uuid_of("web", "1G") == uuid_of("web", "2G") != uuid_of("db", "1G")


def test_extra_args_and_unexpressible_settings_are_not_dropped() -> None:
    data = tomllib.loads(GOOD_SPEC)
    data["qemu"] = {"extra_args": ["-device", "virtio-rng-pci"]}
    data["shares"][0]["security_model"] = "mapped-file"
    data["post_boot"] = [{"run": ["true"]}]
    spec = validate(parse_spec(data, source="t", base=Path("/")), "t")
    exported = libvirt_domain(spec, accel=Accel.TCG, vhost_net=False, seed=SEED)
    domain = ET.fromstring(exported.text)
    assert [arg.get("value") for arg in domain.iter(f"{{{QEMU_NAMESPACE}}}arg")] == ["-device", "virtio-rng-pci"]
    assert any(note.startswith("shares data: libvirt has no mapped-file") for note in exported.notes)
    assert any(note.startswith("post_boot:") for note in exported.notes)


def test_overlay_has_its_base_as_backing_store_and_the_seed_is_a_read_only_cdrom() -> None:
    spec = validate(load_spec(SPECS / "debian.toml"), "debian.toml")
    exported = libvirt_domain(spec, accel=Accel.TCG, vhost_net=False, seed=SEED)
    domain = ET.fromstring(exported.text)
    assert [c.get("model") for c in domain.findall("devices/controller") if c.get("type") == "scsi"] == ["virtio-scsi"]
    root, seed = domain.findall("devices/disk")
    assert root.find("source").get("file") == str(REPO / "images/debian-root.qcow2")  # type: ignore[union-attr]
    backing = root.find("backingStore")
    assert backing is not None and backing.get("type") == "file"
    assert backing.find("format").get("type") == "qcow2"  # type: ignore[union-attr]
    assert backing.find("source").get("file") == str(REPO / "images/debian/debian-12.qcow2")  # type: ignore[union-attr]
    assert (seed.get("type"), seed.get("device")) == ("file", "cdrom")
    assert seed.find("source").get("file") == str(SEED)  # type: ignore[union-attr]
    assert seed.find("target").attrib == {"dev": "sdb", "bus": "scsi"}  # type: ignore[union-attr]
    assert seed.find("readonly") is not None and seed.find("address").get("target") == "1"  # type: ignore[union-attr]
    assert any(note.startswith("cloud_init: libvirt does not build the seed; `vmrun up` writes it to "
                               f"{SEED}") for note in exported.notes)
    assert any(note.startswith("disks root: libvirt does not create the overlay") for note in exported.notes)


def test_systemd_unit_supervises_qemu_through_its_pidfile() -> None:
    spec = load_spec(SPECS / "tiny.toml")
    unit = systemd_unit(spec, spec_path=SPECS / "tiny.toml", vmrun=Path("/usr/bin/vmrun"), paths=PATHS,
                        image_cache=Path("/var/cache/vmrun")).text
    roots = "--run-dir /run/vmrun --state-dir /var/lib/vmrun --cache-dir /var/cache/vmrun"
    assert "Type=forking\n" in unit and "PIDFile=/run/vmrun/tiny/qemu.pid\n" in unit
    assert f"ExecStart=/usr/bin/vmrun {roots} up {SPECS / 'tiny.toml'}\n" in unit
    assert f"ExecStop=/usr/bin/vmrun {roots} down tiny --timeout 60\n" in unit
    assert "Restart=on-failure\n" in unit and "WantedBy=multi-user.target" in unit


@pytest.mark.parametrize("index", [0, 25, 26, 701])
def test_scsi_target_names_follow_the_kernel(index: int) -> None:
    assert scsi_disk_name(index) == {0: "sda", 25: "sdz", 26: "sdaa", 701: "sdzz"}[index]


def test_systemd_start_timeout_is_whole_seconds_for_the_longest_valid_waits() -> None:
    data = tomllib.loads(GOOD_SPEC)
    data["agent"] = {"timeout": "24h"}
    data["post_boot"] = [{"run": ["true"], "timeout": "24h"}, {"run": ["true"], "timeout": "500ms"}]
    spec = validate(parse_spec(data, source="t", base=Path("/")), "t")
    unit = systemd_unit(spec, spec_path=Path("/specs/web.toml"), vmrun=Path("/usr/bin/vmrun"), paths=PATHS,
                        image_cache=Path("/var/cache/vmrun")).text
    assert f"TimeoutStartSec={2 * 86400 + 120}\n" in unit  # agent + hooks + 120 s for qemu, rounded down


def test_systemd_reads_back_paths_with_spaces_specifier_and_variable_characters() -> None:
    spec = validate(parse_spec({**tomllib.loads(GOOD_SPEC), "description": "50% of the host"}, source="t",
                               base=Path("/")), "t")
    odd = RunPaths(run_dir=Path("/run/50%/vmrun/web"), state_dir=Path("/var/lib/a$b/web"))
    unit = systemd_unit(spec, spec_path=Path("/specs/my vms/50%/web.toml"), vmrun=Path("/opt/v m/$x/vmrun"),
                        paths=odd, image_cache=Path('/var/cache/"c" d')).text
    assert "Description=vmrun VM web (50%% of the host)\n" in unit
    assert "Documentation=file:///specs/my%%20vms/50%%25/web.toml\n" in unit
    assert "PIDFile=/run/50%%/vmrun/web/qemu.pid\n" in unit
    # The executable's path is not subject to $ substitution; the arguments are.
    assert ('ExecStart="/opt/v m/$x/vmrun" --run-dir "/run/50%%/vmrun" --state-dir "/var/lib/a$$b" '
            '--cache-dir "/var/cache/\\"c\\" d" up "/specs/my vms/50%%/web.toml"\n') in unit


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_analyze_verifies_a_unit_exported_from_odd_paths(tmp_path: Path) -> None:
    """systemd-analyze resolves the specifiers, checks the Documentation URL and finds the executable: a `%` left
    alone is an unknown specifier, a space in the URL an invalid one, a word split at a space no executable."""
    odd = tmp_path / "my vms 50% $x"
    (odd / "bin").mkdir(parents=True)
    (odd / "bin" / "vmrun").write_text("#!/bin/sh\n")
    (odd / "bin" / "vmrun").chmod(0o755)
    spec = validate(parse_spec(tomllib.loads(GOOD_SPEC), source="t", base=odd), "t")
    unit = tmp_path / "vmrun-web.service"
    unit.write_text(systemd_unit(spec, spec_path=odd / "web.toml", vmrun=odd / "bin" / "vmrun", image_cache=odd / "c",
                                 paths=RunPaths(run_dir=odd / "run" / "web", state_dir=odd / "state" / "web")).text)
    verified = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert (verified.returncode, verified.stderr) == (0, "")


def test_the_unit_passes_on_the_run_state_and_cache_roots_in_effect(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "vmrun", "--run-dir", "run", "--state-dir", "state",
                             "--cache-dir", "cache", "export", str(SPECS / "tiny.toml"), "--format", "systemd"],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(REPO)})  # this tree's vmrun, from elsewhere
    assert result.returncode == 0, result.stderr
    roots = f"--run-dir {tmp_path}/run --state-dir {tmp_path}/state --cache-dir {tmp_path}/cache"
    assert f" {roots} up {SPECS / 'tiny.toml'}\n" in result.stdout
    assert f" {roots} down tiny --timeout 60\n" in result.stdout


TUNED = GOOD_SPEC.replace("[machine]\n", '[machine]\nhugepages = "1G"\nvcpu_pin = [4, 5, 6, 7]\nemulator_pin = [0, 1]\n'
                          "io_thread = true\nnuma_node = 1\n")


def tuned_domain() -> ET.Element:
    spec = validate(parse_spec(tomllib.loads(TUNED), source="t", base=Path("/specs")), "t")
    return ET.fromstring(libvirt_domain(spec, accel=Accel.KVM, vhost_net=False, seed=SEED).text)


def test_tuned_domain_has_huge_pages_pins_an_iothread_and_numatune() -> None:
    domain = tuned_domain()
    assert [(page.get("size"), page.get("unit")) for page in domain.findall("memoryBacking/hugepages/page")] == [
        ("1048576", "KiB")]
    assert domain.find("memoryBacking/nosharepages") is not None  # no KSM in this spec, as before
    assert [(pin.get("vcpu"), pin.get("cpuset")) for pin in domain.findall("cputune/vcpupin")] == [
        ("0", "4"), ("1", "5"), ("2", "6"), ("3", "7")]
    assert domain.find("cputune/emulatorpin").get("cpuset") == "0,1"  # type: ignore[union-attr]
    assert domain.find("cputune/iothreadpin").attrib == {"iothread": "1", "cpuset": "0,1"}  # type: ignore[union-attr]
    assert domain.findtext("iothreads") == "1"
    [scsi] = [c for c in domain.findall("devices/controller") if c.get("type") == "scsi"]
    assert scsi.find("driver").get("iothread") == "1"  # type: ignore[union-attr]
    assert domain.find("numatune/memory").attrib == {"mode": "strict", "nodeset": "1"}  # type: ignore[union-attr]


def test_tuned_domain_is_valid_for_libvirts_schema(tmp_path: Path) -> None:
    validator = Path("/usr/bin/virt-xml-validate")
    if not validator.exists():
        pytest.skip("virt-xml-validate (libvirt-clients) is not installed")
    xml = tmp_path / "tuned.xml"
    xml.write_text(ET.tostring(tuned_domain(), encoding="unicode"))
    result = subprocess.run([str(validator), str(xml), "domain"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
