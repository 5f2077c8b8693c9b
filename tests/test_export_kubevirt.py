"""`vmrun export --format kubevirt`: every export is a VirtualMachine that KubeVirt v1.9.0's CRD schema (strict,
tests/kubevirt/) and its admission rules accept, with Secrets that Kubernetes' own schema accepts; the mapping
keeps the spec's meaning, and what cannot be mapped is one exit-2 error naming every field."""

from __future__ import annotations

import email
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmrun.errors import SpecError
from vmrun.export.kubevirt import (
    MAX_INLINE_CLOUD_INIT,
    CloudInitTexts,
    kubevirt_manifests,
    unmappable,
)
from vmrun.spec.check import validate
from vmrun.spec.load import load_spec, parse_spec
from vmrun.spec.model import Spec

from .common import SPECS
from .specgen import Files, valid_specs

SCHEMA = json.loads((Path(__file__).parent / "kubevirt" / "virtualmachine.strict.json").read_text())
VM_SCHEMA = jsonschema.Draft202012Validator(SCHEMA)
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_INTERFACE_NAME = re.compile(r"[A-Za-z0-9_-]+")
FILES = Files(
    raw_images=(Path("/images/a.raw"),), qcow2_images=(Path("/images/d.qcow2"),), share_dirs=(Path("/srv/data"),),
    kernel=Path("/images/vmlinuz"), initrd=Path("/images/initrd.gz"),
)


def admission_problems(vm: dict[str, Any], secrets: dict[str, dict[str, str]]) -> list[str]:
    """KubeVirt v1.9.0's validating webhook, for what the export writes (file paths in kubevirt/kubevirt)."""
    problems = []
    spec = vm["spec"]["template"]["spec"]
    domain, devices = spec["domain"], spec["domain"]["devices"]
    disks, volumes = devices.get("disks", []), spec.get("volumes", [])
    filesystems = devices.get("filesystems", [])
    # pkg/storage/admitters/disks.go: names unique DNS-1123 labels (they become container names), buses, modes.
    for disk in disks:
        if not _DNS_LABEL.fullmatch(disk["name"]) or len(disk["name"]) > 63:
            problems.append(f"disk name {disk['name']!r} is no DNS-1123 label")
        kind = "disk" if "disk" in disk else "cdrom" if "cdrom" in disk else "lun"
        bus = disk[kind].get("bus")
        if bus not in ("virtio", "scsi", "sata", "usb"):
            problems.append(f"disk {disk['name']}: bus {bus}")
        if kind == "cdrom" and bus == "virtio":
            problems.append(f"disk {disk['name']}: a virtio cdrom")
        if disk.get("cache", "none") not in ("none", "writethrough", "writeback"):
            problems.append(f"disk {disk['name']}: cache {disk['cache']}")
        if disk.get("io", "native") not in ("native", "threads"):
            problems.append(f"disk {disk['name']}: io {disk['io']}")
    orders = [disk["bootOrder"] for disk in disks if "bootOrder" in disk]
    if any(order < 1 for order in orders) or len(set(orders)) != len(orders):
        problems.append(f"boot orders {orders}")
    # vmi-create-admitter.go: volumes and disks/filesystems match one to one; one source per volume.
    device_names = [disk["name"] for disk in disks] + [filesystem["name"] for filesystem in filesystems]
    volume_names = [volume["name"] for volume in volumes]
    if sorted(device_names) != sorted(volume_names) or len(set(volume_names)) != len(volume_names):
        problems.append(f"disks and filesystems {device_names} do not match volumes {volume_names}")
    for volume in volumes:
        if len(volume) != 2:
            problems.append(f"volume {volume['name']} has {len(volume) - 1} sources")
        cloud_init = volume.get("cloudInitNoCloud")
        if cloud_init is not None:
            problems += _cloud_init_problems(volume["name"], cloud_init, secrets)
    # pkg/network/admitter: interfaces and networks one to one, one binding each, masquerade only on the pod
    # network, at most one pod network, the pod bridge's MAC reserved.
    interfaces, networks = devices.get("interfaces", []), {net["name"]: net for net in spec.get("networks", [])}
    if sorted(interface["name"] for interface in interfaces) != sorted(networks):
        problems.append("interfaces and networks differ")
    if sum("pod" in net for net in networks.values()) > 1:
        problems.append("more than one interface on the pod network")
    for interface in interfaces:
        network = networks.get(interface["name"], {})
        bindings = [key for key in ("bridge", "masquerade", "sriov", "binding", "passtBinding") if key in interface]
        if len(bindings) != 1 or not _INTERFACE_NAME.fullmatch(interface["name"]):
            problems.append(f"interface {interface['name']}: bindings {bindings}")
        if "masquerade" in interface and ("pod" not in network or interface.get("macAddress") == "02:00:00:00:00:00"):
            problems.append(f"interface {interface['name']}: masquerade off the pod network or on its MAC")
        if "bridge" in interface and "pod" in network:
            problems.append(f"interface {interface['name']}: bridge on the pod network is off by default")
    # Secure Boot needs SMM; a machine type outside the default emulatedMachines is refused; memory is required.
    efi = domain.get("firmware", {}).get("bootloader", {}).get("efi")
    if efi is not None and efi.get("secureBoot", True) and not domain.get("features", {}).get("smm", {}).get(
            "enabled", False):
        problems.append("Secure Boot without SMM")
    kernel_boot = domain.get("firmware", {}).get("kernelBoot")
    if kernel_boot is not None and "container" not in kernel_boot and "kernelArgs" in kernel_boot:
        problems.append("kernelArgs without a kernel container")
    if not re.fullmatch(r"(q35|pc-q35).*", domain.get("machine", {}).get("type", "q35")):
        problems.append(f"machine type {domain['machine']['type']}")
    if "guest" not in domain.get("memory", {}):
        problems.append("no memory")
    if any(not device.get("deviceName") for device in devices.get("hostDevices", [])):
        problems.append("a host device without deviceName")
    # vms-admitter.go: a run strategy, each DataVolume template referenced by a volume.
    if vm["spec"].get("runStrategy") not in ("Always", "Halted", "Manual", "RerunOnFailure", "Once"):
        problems.append(f"runStrategy {vm['spec'].get('runStrategy')}")
    data_volumes = {volume["dataVolume"]["name"] for volume in volumes if "dataVolume" in volume}
    for template in vm["spec"].get("dataVolumeTemplates", []):
        if template["metadata"]["name"] not in data_volumes or "storage" not in template["spec"]:
            problems.append(f"DataVolume template {template['metadata']['name']}")
    return problems


def _cloud_init_problems(name: str, cloud_init: dict[str, Any], secrets: dict[str, dict[str, str]]) -> list[str]:
    problems = []
    for inline, reference, key in (("userData", "secretRef", "userdata"),
                                   ("networkData", "networkDataSecretRef", "networkdata")):
        if inline in cloud_init and reference in cloud_init:
            problems.append(f"volume {name}: {inline} and {reference}")
        if len(cloud_init.get(inline, "").encode()) > MAX_INLINE_CLOUD_INIT:
            problems.append(f"volume {name}: {inline} over {MAX_INLINE_CLOUD_INIT} bytes")
        if reference in cloud_init and key not in secrets.get(cloud_init[reference]["name"], {}):
            problems.append(f"volume {name}: {reference} names no Secret in the stream with key {key}")
    if not cloud_init:
        problems.append(f"volume {name}: no cloud-init data")
    return problems


def checked_documents(text: str) -> list[dict[str, Any]]:
    """The stream's documents, each VM checked against the schema and the admission rules, each Secret
    against Kubernetes' schema."""
    documents = [document for document in yaml.safe_load_all(text) if document is not None]
    secrets = {}
    for document in documents:
        if document["kind"] == "Secret":
            kubernetes_validate.validate(document, kubernetes_validate.latest_version(), strict=True)
            secrets[document["metadata"]["name"]] = document["stringData"]
    for document in documents:
        if document["kind"] == "VirtualMachine":
            errors = [f"{'.'.join(map(str, error.absolute_path))}: {error.message}"
                      for error in VM_SCHEMA.iter_errors(document)]
            assert errors == []
            assert admission_problems(document, secrets) == []
    return documents


NO_SEED = CloudInitTexts()


def export(spec: Spec, texts: CloudInitTexts = NO_SEED) -> list[dict[str, Any]]:
    return checked_documents(kubevirt_manifests([("test", spec, texts)]).text)


def spec_of(text: str) -> Spec:
    return validate(parse_spec(tomllib.loads(text), source="test", base=Path("/specs")), "test")


def vm_of(documents: list[dict[str, Any]]) -> dict[str, Any]:
    [vm] = [document for document in documents if document["kind"] == "VirtualMachine"]
    template: dict[str, Any] = vm["spec"]["template"]["spec"]
    return template


def vmrun(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vmrun", *args], capture_output=True, text=True, timeout=60)


ONE_NIC = """\
name = "web"
[machine]
cpus = 4
memory = "1536M"
[boot]
disk = "root"
[[disks]]
id = "root"
path = "root.qcow2"
format = "qcow2"
size = "20G"
[[nics]]
id = "net0"
queues = 2
mac = "52:54:00:aa:bb:cc"
[kubevirt.disks.root]
url = "https://example.com/debian.qcow2"
"""


@pytest.mark.parametrize("spec_file", sorted(SPECS.glob("*.toml")), ids=lambda path: path.name)
def test_every_checked_in_spec_exports_what_kubevirt_admits(spec_file: Path) -> None:
    result = vmrun("export", "--format", "kubevirt", str(spec_file))
    assert result.returncode == 0, result.stderr
    documents = checked_documents(result.stdout)
    assert [document["metadata"]["name"] for document in documents if document["kind"] == "VirtualMachine"] == [
        load_spec(spec_file).name
    ]


def test_a_directory_is_one_stream_sorted_by_name_and_one_bad_spec_prints_nothing(tmp_path: Path) -> None:
    result = vmrun("export", "--format", "kubevirt", str(SPECS))
    assert result.returncode == 0, result.stderr
    names = [document["metadata"]["name"] for document in checked_documents(result.stdout)
             if document["kind"] == "VirtualMachine"]
    assert names == sorted(load_spec(path).name for path in SPECS.glob("*.toml"))
    (tmp_path / "b.toml").write_text(ONE_NIC.replace('"web"', '"b"'))
    (tmp_path / "a.toml").write_text(ONE_NIC.replace('"web"', '"a"').split("[kubevirt")[0])
    result = vmrun("export", "--format", "kubevirt", str(tmp_path))
    assert (result.returncode, result.stdout) == (2, "")
    assert "a.toml: disks[0]: disk root has no source in the cluster" in result.stderr


def test_the_headline_spec_maps_meaning() -> None:
    documents = export(load_spec(SPECS / "db.toml"))
    [vm] = documents
    assert vm["metadata"] == {"name": "db", "namespace": "vms", "annotations": {"description": "PostgreSQL primary"}}
    domain = vm["spec"]["template"]["spec"]["domain"]
    assert domain["cpu"] == {"sockets": 1, "cores": 4, "threads": 1}
    assert domain["memory"] == {"guest": "8Gi"}
    assert domain["firmware"]["bootloader"] == {"efi": {"secureBoot": False, "persistent": True}}
    root, wal, seed = domain["devices"]["disks"]
    assert root == {"name": "root", "disk": {"bus": "scsi"}, "cache": "none", "io": "native", "bootOrder": 1}
    assert "bootOrder" not in wal and seed["cdrom"]["bus"] == "scsi"
    assert domain["devices"]["interfaces"] == [
        {"name": "net0", "model": "virtio", "macAddress": "52:54:00:12:34:56", "bridge": {}}]
    assert domain["devices"]["networkInterfaceMultiqueue"] is True
    assert domain["devices"]["filesystems"] == [{"name": "conf", "virtiofs": {}}]
    assert domain["devices"]["hostDevices"] == [{"name": "nvme0", "deviceName": "samsung.com/PM9A3"}]
    assert vm["spec"]["template"]["spec"]["networks"] == [{"name": "net0", "multus": {"networkName": "vms/br0"}}]


def test_what_kubevirt_does_differently_is_a_comment_in_the_yaml() -> None:
    text = kubevirt_manifests([("db", load_spec(SPECS / "db.toml"), CloudInitTexts())]).text
    comments = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    for said in ("as many queue pairs as vCPUs", "no 9p; virtiofs", "mount -t virtiofs conf", "KSM on per node",
                 "not 'vmrun'", "post_boot"):
        assert said in comments


def test_multiqueue_is_carried_into_the_guest_by_mac_at_every_boot() -> None:
    cloud_config = "#cloud-config\nbootcmd:\n- echo mine\npackages: [ethtool]\n"
    vm = vm_of(export(spec_of(ONE_NIC), CloudInitTexts(user_data=cloud_config)))
    user_data = vm["volumes"][-1]["cloudInitNoCloud"]["userData"]
    assert user_data.startswith("#cloud-config\n")
    merged = yaml.safe_load(user_data)
    assert merged["packages"] == ["ethtool"]
    assert merged["bootcmd"][0] == "echo mine"
    assert "52:54:00:aa:bb:cc" in merged["bootcmd"][1] and "combined 2" in merged["bootcmd"][1]


def test_a_script_user_data_goes_beside_the_multiqueue_step_in_a_mime_multipart() -> None:
    script = "#!/bin/sh\necho hello > /etc/hello\n"
    vm = vm_of(export(spec_of(ONE_NIC), CloudInitTexts(user_data=script)))
    message = email.message_from_string(vm["volumes"][-1]["cloudInitNoCloud"]["userData"])
    assert message.is_multipart()
    parts = [(part.get_content_type(), part.get_payload(decode=True).decode()) for part in message.get_payload()]
    assert parts[0] == ("text/x-shellscript", script)
    assert parts[1][0] == "text/cloud-config" and "combined 2" in yaml.safe_load(parts[1][1])["bootcmd"][0]


def test_single_queue_nics_need_neither_multiqueue_nor_a_boot_command() -> None:
    vm = vm_of(export(spec_of(ONE_NIC.replace("queues = 2", "queues = 1"))))
    assert "networkInterfaceMultiqueue" not in vm["domain"]["devices"]
    assert all(volume["name"] != "cidata" for volume in vm["volumes"])


def test_cloud_init_over_kubevirts_inline_limit_goes_into_a_secret() -> None:
    big = "#cloud-config\nwrite_files:\n" + "".join(f"- path: /etc/f{index}\n  content: x\n" for index in range(200))
    network = "version: 2\nethernets: {}\n# " + "n" * 3000 + "\n"
    documents = export(spec_of(ONE_NIC + '[cloud_init]\nuser_data = "u.yaml"\n[kubevirt]\nnamespace = "vms"\n'),
                       CloudInitTexts(user_data=big, network_config=network))
    secret, vm = documents
    assert secret["metadata"] == {"name": "web-cloud-init", "namespace": "vms"}
    assert yaml.safe_load(secret["stringData"]["userdata"])["write_files"][199]["path"] == "/etc/f199"
    assert secret["stringData"]["networkdata"] == network
    cloud_init = vm["spec"]["template"]["spec"]["volumes"][-1]["cloudInitNoCloud"]
    assert cloud_init == {"secretRef": {"name": "web-cloud-init"}, "networkDataSecretRef": {"name": "web-cloud-init"}}


def test_cache_and_io_modes_kubevirt_refuses_become_the_nearest_it_takes_and_say_so() -> None:
    text = ONE_NIC.replace('size = "20G"\n', 'size = "20G"\ncache = "directsync"\naio = "io_uring"\n')
    exported = kubevirt_manifests([("test", spec_of(text), CloudInitTexts())])
    [disk] = [disk for disk in vm_of(checked_documents(exported.text))["domain"]["devices"]["disks"]
              if disk["name"] == "root"]
    assert disk["cache"] == "none" and "io" not in disk
    assert any("no cache directsync" in note for note in exported.notes)
    assert any("no aio io_uring" in note for note in exported.notes)


def test_old_q35_machine_types_get_their_vcpus_as_sockets_as_qemu_gives_them() -> None:
    vm = vm_of(export(spec_of(ONE_NIC.replace("cpus = 4", 'type = "pc-q35-6.1"\ncpus = 4'))))
    assert vm["domain"]["cpu"] == {"sockets": 4, "cores": 1, "threads": 1}
    assert vm["domain"]["memory"]["guest"] == "1536Mi"


def test_secure_boot_comes_with_smm() -> None:
    text = ONE_NIC.replace('[boot]\n', '[boot]\nfirmware = "uefi"\n') + "[kubevirt]\nsecure_boot = true\n"
    vm = vm_of(export(spec_of(text)))
    assert vm["domain"]["firmware"]["bootloader"]["efi"]["secureBoot"] is True
    assert vm["domain"]["features"] == {"smm": {"enabled": True}}


def test_what_cannot_be_mapped_is_one_exit_2_error_naming_every_field(tmp_path: Path) -> None:
    spec = tmp_path / "x.toml"
    spec.write_text("""\
name = "x"
[machine]
type = "pc"
[boot]
kernel = "vmlinuz"
[[disks]]
id = "root"
path = "/dev/sdb"
passthrough = true
[[disks]]
id = "data"
path = "data.raw"
[[nics]]
id = "a"
[[nics]]
id = "b"
[[vfio]]
id = "gpu"
host = "01:00.0"
[[shares]]
id = "s"
path = "/srv"
tag = "s"
[qemu]
extra_args = ["-device", "virtio-rng-pci"]
""")
    result = vmrun("export", "--format", "kubevirt", str(spec))
    assert (result.returncode, result.stdout) == (2, "")
    fields = [line.split(": ")[3] for line in result.stderr.splitlines()]
    assert fields == ["machine.type", "boot.kernel", "disks[0].passthrough", "disks[1]", "nics", "vfio[0]",
                      "shares[0]", "qemu.extra_args"]
    assert "Traceback" not in result.stderr


def test_validate_checks_the_kubevirt_table(tmp_path: Path) -> None:
    misspelt, wrong = tmp_path / "misspelt.toml", tmp_path / "wrong.toml"
    misspelt.write_text(ONE_NIC + '[kubevirt.nics.net0]\nnetwrok = "br0"\n')
    wrong.write_text(ONE_NIC + '[kubevirt.disks.rot]\npvc = "a"\n[kubevirt.vfio.gpu]\ndevice_name = "GA102"\n'
                     '[kubevirt.nics.net0]\nnetwork = "a/b/c"\n')
    result = vmrun("validate", str(misspelt), str(wrong))
    assert result.returncode == 2
    assert [line.split(": ", 3)[2:] for line in result.stderr.splitlines()] == [
        [str(misspelt), "kubevirt.nics.net0.netwrok: unknown key (hint: did you mean 'network'?)"],
        [str(wrong), "kubevirt.disks.rot: no disk has id 'rot' (hint: ids in disks: root)"],
        [str(wrong), "kubevirt.vfio.gpu: no VFIO device has id 'gpu' (hint: the spec has no vfio)"],
        [str(wrong), "kubevirt.nics.net0.network: 'a/b/c' is not a network attachment name "
                     "(hint: write \"name\" or \"namespace/name\")"],
        [str(wrong), "kubevirt.vfio.gpu.device_name: 'GA102' is not a resource name "
                     "(hint: as permittedHostDevices names it, e.g. \"nvidia.com/GA102GL_A10\")"],
    ]


@st.composite
def exportable_documents(draw: st.DrawFn) -> tuple[dict[str, Any], CloudInitTexts]:
    """A generated spec with a [kubevirt] table for (nearly) all its devices, and seed texts of any size."""
    data = draw(valid_specs(FILES))
    image = st.sampled_from(["quay.io/containerdisks/debian:12", "registry.example.com:5000/a/b@sha256:" + "0" * 64])
    sources = st.one_of(st.builds(lambda name: {"pvc": name}, st.from_regex(r"[a-z0-9]([a-z0-9.-]{0,20}[a-z0-9])?",
                                                                             fullmatch=True)),
                        st.builds(lambda ref: {"container_disk": ref}, image),
                        st.just({"url": "https://example.com/a.qcow2"}))
    kubevirt: dict[str, Any] = {"disks": {}, "nics": {}, "vfio": {}, "shares": {}}
    for disk in data["disks"]:
        if draw(st.integers(0, 9)):  # now and then a disk without a source
            kubevirt["disks"][disk["id"]] = draw(sources)
    for index, nic in enumerate(data["nics"]):
        if index or draw(st.booleans()):  # mostly one NIC on the pod network at most
            kubevirt["nics"][nic["id"]] = {"network": draw(st.sampled_from(["br0", "ns/br-1", "a.b"]))}
    for vfio in data["vfio"]:
        kubevirt["vfio"][vfio["id"]] = {"device_name": "nvidia.com/GA102GL_A10"}
    for share in data["shares"]:
        kubevirt["shares"][share["id"]] = {"pvc": "shared"}
    if draw(st.booleans()):
        kubevirt["kernel_image"] = "quay.io/vmrun/kernel:1"
    kubevirt["secure_boot"] = data.get("boot", {}).get("firmware") == "uefi" and draw(st.booleans())  # UEFI only
    data["kubevirt"] = kubevirt
    script = st.builds(lambda body: f"#!/bin/sh\n{body}\n", st.text(st.characters(codec="utf-8", exclude_categories=(
        "Cs", "Cc")), max_size=3000))
    config = st.builds(lambda count: "#cloud-config\nruncmd:\n" + "- [touch, /tmp/x]\n" * count, st.integers(0, 200))
    texts = CloudInitTexts()
    if draw(st.booleans()):
        data["cloud_init"] = {"user_data": "u", "meta_data": {"local-hostname": draw(st.sampled_from(["h", "H_1"]))}}
        network_configs = st.sampled_from([None, "version: 2\n", "version: 2\n#" + "x" * 2100])
        texts = CloudInitTexts(user_data=draw(st.one_of(script, config)), network_config=draw(network_configs))
    return data, texts


# What a generated spec may lack for KubeVirt: a source or a kernel image, a machine type, a Kubernetes name.
_EXPECTED_REFUSALS = re.compile(r"(name|machine\.type|boot\.kernel|disks\[\d+\](\.passthrough|\.size)?|nics|"
                                r"nics\[\d+\]\.mac|cloud_init\.meta_data\.local-hostname)")


@settings(max_examples=int(os.environ.get("VMRUN_FUZZ_EXAMPLES", "0")) or 150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(exportable_documents())
def test_generated_specs_export_what_kubevirt_admits_or_name_what_is_missing(
        drawn: tuple[dict[str, Any], CloudInitTexts]) -> None:
    data, texts = drawn
    try:
        spec = spec_of_data(data)
    except SpecError:
        return  # qemu's limits, which validate refuses; test_fuzz covers them
    problems = unmappable(spec)
    if problems:
        assert all(_EXPECTED_REFUSALS.fullmatch(problem.path) for problem in problems), problems
        with pytest.raises(SpecError):
            kubevirt_manifests([("test", spec, texts)])
        return
    documents = export(spec, texts)
    assert Counter(document["kind"] for document in documents)["VirtualMachine"] == 1


def spec_of_data(data: dict[str, Any]) -> Spec:
    return validate(parse_spec(data, source="test", base=Path("/specs")), "test")


# ONE_NIC's VM without its NIC and its KubeVirt source, its disk on a base image by URL.
URL_BASE = ONE_NIC.split("[[nics]]")[0] + f"""\
base = "https://images.example/debian-12.qcow2"
base_digest = "sha256:{'ab' * 32}"
"""


def test_a_url_base_is_suggested_as_the_import_and_its_unchecked_digest_is_said(tmp_path: Path) -> None:
    spec = tmp_path / "web.toml"
    spec.write_text(URL_BASE)
    result = vmrun("export", "--format", "kubevirt", str(spec))
    assert (result.returncode, result.stdout) == (2, "")
    assert 'add [kubevirt.disks.root] with pvc, container_disk or url (url = ' \
           '"https://images.example/debian-12.qcow2" imports the base image)' in result.stderr
    documents = export(spec_of(URL_BASE + '[kubevirt.disks.root]\nurl = "https://images.example/debian-12.qcow2"\n'))
    [vm] = [document for document in documents if document["kind"] == "VirtualMachine"]
    assert vm["spec"]["dataVolumeTemplates"][0]["spec"]["source"] == {
        "http": {"url": "https://images.example/debian-12.qcow2"}}
    text = kubevirt_manifests([("test", spec_of(URL_BASE + '[kubevirt.disks.root]\nurl = '
                                             '"https://images.example/debian-12.qcow2"\n'), NO_SEED)]).text
    assert f"CDI imports the URL without checking base_digest sha256:{'ab' * 32}" in text


@pytest.mark.parametrize("user_data", [
    "#!/bin/sh\necho 'a\x85b'\n",  # NEL is a YAML line break: in a literal block it came back as "\n"
    "#!/bin/sh\necho '\u2028'\n---\n# kind: Secret\n...\n",
    "#cloud-config\nruncmd: ['echo x\x85', 'echo a\x85b']\n",
])
def test_user_data_reaches_kubevirt_exactly_as_written(user_data: str) -> None:
    documents = export(spec_of(ONE_NIC.replace("queues = 2", "queues = 1") + '[cloud_init]\nuser_data = "u"\n'),
                       CloudInitTexts(user_data=user_data))
    assert vm_of(documents)["volumes"][-1]["cloudInitNoCloud"]["userData"] == user_data


def test_a_cloud_config_keeps_its_values_when_the_multiqueue_step_is_added_to_it() -> None:
    documents = export(spec_of(ONE_NIC + '[cloud_init]\nuser_data = "u"\n'),
                       CloudInitTexts(user_data='#cloud-config\nruncmd: ["echo x\\N", "echo a\\Nb"]\n'))
    user_data = yaml.safe_load(vm_of(documents)["volumes"][-1]["cloudInitNoCloud"]["userData"])
    assert user_data["runcmd"] == ["echo x\x85", "echo a\x85b"]


def cloud_init_runs(bootcmd: list[Any], tmp_path: Path, interfaces: dict[str, str], failing: str = "",
                    virtual: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """bootcmd run as cloud-init runs it (cc_bootcmd: util.shellify, one entry a line, argv lists quoted, then one
    /bin/sh), against a /sys/class/net of these interfaces (name: MAC, each a device) and ``virtual`` ones (no
    device: a loopback unless given), and an ethtool that records its arguments and fails for ``failing``."""
    net = tmp_path / "sys-class-net"
    devices = dict.fromkeys(interfaces, True) | dict.fromkeys(virtual or {"lo": ""}, False)
    for name, mac in {**interfaces, **(virtual or {"lo": "00:00:00:00:00:00"})}.items():
        (net / name).mkdir(parents=True)
        (net / name / "address").write_text(f"{mac}\n")
        if devices[name]:
            (net / name / "device").mkdir()
    (tmp_path / "ethtool").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/called\n[ "$2" != "{failing}" ]\n')
    (tmp_path / "ethtool").chmod(0o755)
    script = "".join((shlex.join(map(str, entry)) if isinstance(entry, list) else entry) + "\n"
                     for entry in bootcmd if entry is not None)
    return subprocess.run(["sh", "-c", script.replace("/sys/class/net", str(net))], capture_output=True, text=True,
                          env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}, timeout=30)


def bootcmd_of(documents: list[dict[str, Any]]) -> list[Any]:
    bootcmd: list[Any] = yaml.safe_load(vm_of(documents)["volumes"][-1]["cloudInitNoCloud"]["userData"])["bootcmd"]
    return bootcmd


# ONE_NIC's multiqueue tap NIC on a Multus network, and a user-mode NIC on the pod network.
TAP_AND_USER = ONE_NIC + """[[nics]]
id = "net1"
mode = "user"
mac = "52:54:00:dd:ee:ff"
[kubevirt.nics.net0]
network = "vms/br0"
"""


def test_every_nic_gets_its_own_queue_count_a_user_mode_nic_one_pair(tmp_path: Path) -> None:
    bootcmd = bootcmd_of(export(spec_of(TAP_AND_USER)))
    ran = cloud_init_runs(bootcmd, tmp_path, {"eth0": "52:54:00:aa:bb:cc", "eth1": "52:54:00:dd:ee:ff"})
    assert ran.returncode == 0, ran.stderr
    assert (tmp_path / "called").read_text().splitlines() == ["-L eth0 combined 2", "-L eth1 combined 1"]


def test_a_failed_ethtool_is_a_console_line_and_a_failed_bootcmd(tmp_path: Path) -> None:
    bootcmd = bootcmd_of(export(spec_of(ONE_NIC), CloudInitTexts(user_data="#cloud-config\nbootcmd: [echo mine]\n")))
    # eth0 is the NIC; eth1, after it, is another: a loop's status would be the last interface's, 0.
    interfaces = {"eth0": "52:54:00:aa:bb:cc", "eth1": "52:54:00:00:00:01"}
    ran = cloud_init_runs(bootcmd, tmp_path / "fails", interfaces, failing="eth0")
    assert ran.returncode != 0
    assert "vmrun: ethtool -L eth0 combined 2 failed" in ran.stderr
    ran = cloud_init_runs(bootcmd, tmp_path / "missing", {"eth1": "52:54:00:00:00:01"})
    assert ran.returncode != 0
    assert "vmrun: no network interface has MAC 52:54:00:aa:bb:cc" in ran.stderr
    # Each NIC gets its line though an earlier one failed, and the whole fails.
    bootcmd = bootcmd_of(export(spec_of(TAP_AND_USER)))
    ran = cloud_init_runs(bootcmd, tmp_path / "first", interfaces | {"eth2": "52:54:00:dd:ee:ff"}, failing="eth0")
    assert ran.returncode != 0
    assert (tmp_path / "first" / "called").read_text().splitlines() == ["-L eth0 combined 2", "-L eth2 combined 1"]


def test_the_ethtool_step_finds_the_nic_by_its_mac_and_not_a_bridge_that_shows_it_too(tmp_path: Path) -> None:
    bootcmd = bootcmd_of(export(spec_of(ONE_NIC)))
    ran = cloud_init_runs(bootcmd, tmp_path, {"eth0": "52:54:00:00:00:01", "ens3": "52:54:00:aa:bb:cc"},
                          virtual={"br0": "52:54:00:aa:bb:cc", "lo": "00:00:00:00:00:00"})
    assert ran.returncode == 0, ran.stderr
    assert (tmp_path / "called").read_text() == "-L ens3 combined 2\n"


def test_the_yaml_says_which_guests_get_no_per_nic_count() -> None:
    text = kubevirt_manifests([("test", spec_of(ONE_NIC), NO_SEED)]).text
    comments = " ".join(line.removeprefix("# ") for line in text.splitlines() if line.startswith("#"))
    assert "A guest without cloud-init, or without ethtool when bootcmd runs" in comments
    assert "gets no per-NIC count" in comments


@pytest.mark.parametrize(("bootcmd", "theirs", "output"), [
    ("bootcmd:\n", [], ""),
    ("bootcmd: echo hi\n", ["echo hi"], "hi\n"),
    ("bootcmd:\n- [echo, 'a b']\n- echo c\n", [["echo", "a b"], "echo c"], "a b\nc\n"),
], ids=["null", "string", "list"])
def test_the_multiqueue_step_follows_a_bootcmd_of_every_shape_cloud_init_takes(
        tmp_path: Path, bootcmd: str, theirs: list[Any], output: str) -> None:
    spec = tmp_path / "web.toml"
    spec.write_text(ONE_NIC + '[cloud_init]\nuser_data = "user-data"\n')
    (tmp_path / "user-data").write_text(f"#cloud-config\n{bootcmd}")
    result = vmrun("export", "--format", "kubevirt", str(spec))
    assert result.returncode == 0, result.stderr
    merged = bootcmd_of(checked_documents(result.stdout))
    assert merged[:len(theirs)] == theirs and len(merged) == len(theirs) + 2  # the NIC's line, the closing test
    ran = cloud_init_runs(merged, tmp_path, {"eth0": "52:54:00:aa:bb:cc"})
    assert (ran.returncode, ran.stdout) == (0, output), ran.stderr
    assert (tmp_path / "called").read_text() == "-L eth0 combined 2\n"


def test_a_bootcmd_cloud_init_would_refuse_is_named_not_a_crash() -> None:
    with pytest.raises(SpecError) as raised:
        kubevirt_manifests([("web.toml", spec_of(ONE_NIC),
                             CloudInitTexts(user_data="#cloud-config\nbootcmd: {a: b}\n"))])
    assert str(raised.value) == ("web.toml: cloud_init.user_data: bootcmd is a dict, which cloud-init does not run "
                                 "(hint: write bootcmd as a list of commands, or as one string)")


def test_secure_boot_without_uefi_is_refused_at_validate(tmp_path: Path) -> None:
    spec = tmp_path / "web.toml"
    spec.write_text(ONE_NIC + "[kubevirt]\nsecure_boot = true\n")
    for command in (("validate", str(spec)), ("export", "--format", "kubevirt", str(spec))):
        result = vmrun(*command)
        assert (result.returncode, result.stdout) == (2, ""), command
        assert (f"{spec}: kubevirt.secure_boot: Secure Boot needs UEFI firmware, and boot.firmware is bios"
                in result.stderr), command
        assert 'set boot.firmware = "uefi", or remove secure_boot' in result.stderr


def test_a_narrower_network_that_becomes_the_open_pod_network_is_said(tmp_path: Path) -> None:
    tap = tmp_path / "tap.toml"
    tap.write_text(ONE_NIC)
    restricted = tmp_path / "restricted.toml"
    restricted.write_text(ONE_NIC.replace("queues = 2\n", 'mode = "user"\nrestrict = true\n'))
    for spec, said in ((tap, "nics net0: a tap without a bridge reaches only what the host routes to it; on the pod "
                             "network (masquerade), which is open"),
                       (restricted, "nics net0: restrict = true shuts the guest in; on the pod network (masquerade), "
                                    "which is open")):
        result = vmrun("export", "--format", "kubevirt", str(spec))
        assert result.returncode == 0, result.stderr
        assert f"not expressible in kubevirt: web: {said}" in result.stderr
        assert f"# - {said}" in result.stdout


def test_a_tuned_spec_asks_kubevirt_for_huge_pages_dedicated_cpus_and_iothreads_and_says_what_differs() -> None:
    tuned = ONE_NIC.replace('memory = "1536M"', 'memory = "2G"\nhugepages = "2M"\nvcpu_pin = [4, 5, 6, 7]\n'
                            'emulator_pin = [0]\nio_thread = true\nnuma_node = 1')
    domain = vm_of(export(spec_of(tuned)))["domain"]  # checked against the schema and admission rules
    assert domain["memory"] == {"guest": "2Gi", "hugepages": {"pageSize": "2Mi"}}
    assert domain["cpu"] == {"sockets": 1, "cores": 4, "threads": 1, "dedicatedCpuPlacement": True,
                             "isolateEmulatorThread": True}
    assert domain["ioThreadsPolicy"] == "shared"
    text = kubevirt_manifests([("web", spec_of(tuned), NO_SEED)]).text
    comments = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    for said in ("KubeVirt picks the host CPUs itself", "isolateEmulatorThread", "machine.numa_node"):
        assert said in comments
    one_gib = vm_of(export(spec_of(tuned.replace('"2M"', '"1G"'))))["domain"]["memory"]
    assert one_gib["hugepages"] == {"pageSize": "1Gi"}


def test_live_migration_is_said_and_asked_for_with_live_migrate() -> None:
    plain = kubevirt_manifests([("web", spec_of(ONE_NIC), NO_SEED)]).text
    assert "# - live migration needs evictionStrategy: LiveMigrate ([kubevirt] live_migrate = true) and storage " \
           "every node can mount at once (ReadWriteMany PVCs)" in plain
    assert "evictionStrategy" not in vm_of(checked_documents(plain))
    migrating = export(spec_of(ONE_NIC + "[kubevirt]\nlive_migrate = true\n"))
    assert vm_of(migrating)["evictionStrategy"] == "LiveMigrate"


def test_live_migrate_with_a_passed_through_device_is_refused_at_validate(tmp_path: Path) -> None:
    spec = tmp_path / "gpu.toml"
    spec.write_text(ONE_NIC + '[[vfio]]\nid = "gpu"\nhost = "01:00.0"\n[kubevirt]\nlive_migrate = true\n'
                    '[kubevirt.vfio.gpu]\ndevice_name = "nvidia.com/GA102GL_A10"\n')
    result = vmrun("validate", str(spec))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"vmrun: error: {spec}: kubevirt.live_migrate: vfio[0] (gpu) cannot move while the VM runs "
        "(hint: KubeVirt refuses to migrate a VM with host devices; set live_migrate = false)"]
