"""IOMMU groups on fake host trees: the kernel's rule for what may stay beside a passed device, one verdict
for `host iommu` and preflight, and a group that goes to one VM at a time."""

from __future__ import annotations

from pathlib import Path

from vmrun.preflight.others import Others
from vmrun.preflight.report import iommu_report
from vmrun.run.ending import others_than
from vmrun.state.locations import Places
from vmrun.state.vmstate import StateJournal, VmState

from .fakehost import FakeHost, FakePci
from .test_preflight import BRIDGE, GPU, GPU_AUDIO, NVME, fake_host, messages, plan_for, vfio_spec

# Q35's ICH9 functions share a group. The LPC bridge is an endpoint to the kernel (header type 0, here with
# the multi-function bit), so lpc_ich holding it keeps the group from vfio.
LPC = FakePci("0000:00:1f.0", group="7", driver="lpc_ich", device_class="0x060100", header_type=0x80)
SATA = FakePci("0000:00:1f.2", group="7", driver="ahci", device_class="0x010601")
SMBUS = FakePci("0000:00:1f.3", group="7", driver="i801_smbus", device_class="0x0c0500")
LPC_REFUSAL = ("IOMMU group 7 cannot be passed through: 0000:00:1f.0 (driver lpc_ich) stays with the host: it is "
               "an ISA/LPC bridge (the firmware flash, TPM, serial ports and keyboard sit behind it)")


def suggested(host: FakeHost) -> list[str]:
    """The addresses `host iommu` offers as [[vfio]] lines, group by group."""
    return [line.split('"')[1] for group in iommu_report(host) for line in group.vfio_lines()
            if line.startswith("host = ")]


def test_fake_sysfs_a_group_with_a_busy_lpc_bridge_is_offered_nowhere_and_refused(tmp_path: Path) -> None:
    host = fake_host(tmp_path, (LPC, SATA, SMBUS))
    [group] = iommu_report(host)
    assert (group.refusal, group.vfio_lines()) == (LPC_REFUSAL, [])
    assert messages(plan_for(vfio_spec("00:1f.2", "00:1f.3"), host)) == [LPC_REFUSAL, LPC_REFUSAL]
    assert messages(plan_for(vfio_spec("00:1f.0"), host)) == [
        "refusing to take 0000:00:1f.0 from the host: it is an ISA/LPC bridge (the firmware flash, TPM, serial "
        "ports and keyboard sit behind it)"]


# A CardBus bridge (header type 2) stays beside a passed device as a PCI bridge does; a bridge class with a
# type 0 header ("other bridge", 0x0680) is an endpoint its driver holds.
CARDBUS = FakePci("0000:00:1e.0", group="9", driver="yenta_cardbus", device_class="0x060700")
OTHER_BRIDGE = FakePci("0000:00:1e.1", group="9", driver="some_bridge", device_class="0x068000")
WIFI = FakePci("0000:02:00.0", group="9", driver="iwlwifi", device_class="0x028000", behind="0000:00:1e.0")
# A tree without config files (recorded by an older record-host): the class tells a PCI bridge.
BRIDGE_WITHOUT_CONFIG = FakePci("0000:00:1c.0", group="10", driver="pcieport", device_class="0x060400",
                                has_config=False)
NIC = FakePci("0000:04:00.0", group="10", driver="e1000e", device_class="0x020000", behind="0000:00:1c.0")


def test_fake_sysfs_bridges_are_told_by_header_type_and_what_host_iommu_offers_preflight_takes(
    tmp_path: Path,
) -> None:
    host = fake_host(tmp_path, (LPC, SATA, SMBUS, CARDBUS, OTHER_BRIDGE, WIFI, BRIDGE_WITHOUT_CONFIG, NIC,
                                BRIDGE, NVME, GPU, GPU_AUDIO))
    offered = suggested(host)
    # Group 7 keeps its LPC bridge; 9 passes the type 0 "bridge" with the card behind the CardBus bridge.
    assert offered == ["0000:00:1e.1", "0000:02:00.0", "0000:04:00.0", "0000:01:00.0", "0000:03:00.0",
                       "0000:03:00.1"]
    assert messages(plan_for(vfio_spec(*offered), host)) == []


def test_fake_sysfs_a_bridge_in_vfio_is_refused(tmp_path: Path) -> None:
    host = fake_host(tmp_path, (CARDBUS, OTHER_BRIDGE, WIFI))
    assert messages(plan_for(vfio_spec("00:1e.0"), host)) == [
        "refusing to pass 0000:00:1e.0: it is a CardBus bridge (header type 2), which vfio-pci does not bind: "
        "list the devices behind it instead"]


def test_fake_sysfs_a_device_another_vm_passes_is_refused_naming_the_vm(tmp_path: Path) -> None:
    host = fake_host(tmp_path, (GPU, GPU_AUDIO))
    held = Others(vfio={"0000:03:00.0": "web", "0000:03:00.1": "web"})
    assert messages(plan_for(vfio_spec("03:00.0", "03:00.1"), host, others=held)) == [
        "0000:03:00.0 is held by VM web: vmrun down web first, or pass another device",
        "0000:03:00.1 is held by VM web: vmrun down web first, or pass another device",
    ]
    partner = Others(vfio={"0000:03:00.1": "web"})
    assert messages(plan_for(vfio_spec("03:00.0"), host, others=partner)) == [
        "IOMMU group 15 is held by VM web, which passes 0000:03:00.1: a group goes to one VM at a time"]


def test_fake_sysfs_the_devices_a_vm_passes_are_held_while_its_state_file_exists(tmp_path: Path) -> None:
    # Until its `down` gives them back, the devices stay on vfio-pci for it, dead qemu or not.
    host = fake_host(tmp_path, (GPU, GPU_AUDIO))
    places = Places(run_root=tmp_path / "run", state_root=tmp_path / "state")
    StateJournal.begin(places.of("web"), VmState(name="web", spec_path="/specs/web.toml", argv=("qemu",),
                                                 accel="tcg", accel_reason="test", vfio=("0000:03:00.1",)))
    others = others_than(host, places, "fake")
    assert others.vfio == {"0000:03:00.1": "web"}
    assert messages(plan_for(vfio_spec("03:00.1"), host, others=others)) == [
        "0000:03:00.1 is held by VM web: vmrun down web first, or pass another device"]
    assert others_than(host, places, "web").vfio == {}  # a VM does not hold its own devices against itself
