"""The cloud-init seed: the files validate checks, the ISO `up` writes (read back with pycdlib), `init --base`."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import pycdlib
import pytest
import yaml

from vmrun.cli.starter import starter_spec, starter_user_data
from vmrun.errors import SpecError
from vmrun.guest.cloudinit import make_seed, seed_file_problems, write_seed
from vmrun.host.user import public_keys
from vmrun.spec.check import validate
from vmrun.spec.load import load_spec, parse_spec
from vmrun.spec.model import Spec

from .common import REPO, SPECS

USER_DATA = "#cloud-config\nusers:\n  - name: demo\n"


def seed_spec(tmp_path: Path, **cloud_init: object) -> Spec:
    data = {"name": "web", "boot": {"kernel": "k"}, "cloud_init": {"user_data": "user-data.yaml", **cloud_init}}
    return parse_spec(data, source="t", base=tmp_path)


def problems(spec: Spec) -> list[str]:
    return [str(problem) for problem in seed_file_problems(spec)]


def read_iso(path: Path) -> tuple[str, dict[str, bytes], list[str]]:
    """The volume label, each file by its Rock Ridge name, and the Joliet names."""
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        label = iso.pvd.volume_identifier.decode().strip()
        files = {}
        for record in iso.list_children(rr_path="/"):
            name = record.rock_ridge.name().decode()
            if name in (".", ".."):
                continue
            content = io.BytesIO()
            iso.get_file_from_iso_fp(content, rr_path=f"/{name}")
            files[name] = content.getvalue()
        joliet = sorted(
            record.file_identifier().decode("utf-16-be") for record in iso.list_children(joliet_path="/")
            if not record.is_dot() and not record.is_dotdot()
        )
    finally:
        iso.close()
    return label, files, joliet


def test_seed_iso_is_labelled_cidata_with_nocloud_file_names(tmp_path: Path) -> None:
    (tmp_path / "user-data.yaml").write_text(USER_DATA)
    (tmp_path / "net.yaml").write_text("version: 2\nethernets: {}\n")
    spec = seed_spec(tmp_path, network_config="net.yaml", meta_data={"local-hostname": "www", "zone": "a"})
    seed = make_seed(spec, "t")
    write_seed(seed, tmp_path / "seed.iso")
    label, files, joliet = read_iso(tmp_path / "seed.iso")
    assert label == "cidata"
    assert sorted(files) == joliet == ["meta-data", "network-config", "user-data"]
    assert files["user-data"] == USER_DATA.encode()
    assert files["network-config"] == b"version: 2\nethernets: {}\n"
    # meta_data is merged over the defaults, and the file is YAML (cloud-init reads it so).
    assert yaml.safe_load(files["meta-data"]) == {
        "instance-id": seed.instance_id, "local-hostname": "www", "zone": "a"}
    assert list(tmp_path.glob(".*partial")) == []


def test_instance_id_changes_with_the_seeds_content_only(tmp_path: Path) -> None:
    user_data = tmp_path / "user-data.yaml"
    user_data.write_text(USER_DATA)
    first = make_seed(seed_spec(tmp_path), "t").instance_id
    assert make_seed(seed_spec(tmp_path), "t").instance_id == first
    user_data.write_text(USER_DATA + "packages: [htop]\n")
    changed = make_seed(seed_spec(tmp_path), "t").instance_id
    with_meta = make_seed(seed_spec(tmp_path, meta_data={"zone": "b"}), "t").instance_id
    assert len({first, changed, with_meta}) == 3 and first.startswith("iid-web-")
    assert make_seed(seed_spec(tmp_path, meta_data={"instance-id": "mine"}), "t").instance_id == "mine"


@pytest.mark.parametrize(
    ("user_data", "network_config", "expected"),
    [
        (None, None, "cloud_init.user_data: {dir}/user-data.yaml: no such file"),
        ("users: []\n", None,
         "cloud_init.user_data: {dir}/user-data.yaml line 1: must start with '#cloud-config' or a '#!' script "
         "(hint: put #cloud-config on the first line)"),
        ("#cloud-config\nusers:\n  - name: [a\n", None,
         "cloud_init.user_data: {dir}/user-data.yaml line 4: not valid YAML: expected ',' or ']', but got "
         "'<stream end>'"),
        ("#cloud-config\n- a list\n", None,
         "cloud_init.user_data: {dir}/user-data.yaml: #cloud-config must be a YAML mapping, not a list"),
        (USER_DATA, "version: 2\n  ethernets: x\n",
         "cloud_init.network_config: {dir}/net.yaml line 2: not valid YAML: mapping values are not allowed here"),
        (USER_DATA, None, "cloud_init.network_config: {dir}/net.yaml: no such file"),
    ],
)
def test_seed_file_mistakes_name_the_key_the_file_and_the_line(
    tmp_path: Path, user_data: str | None, network_config: str | None, expected: str
) -> None:
    if user_data is not None:
        (tmp_path / "user-data.yaml").write_text(user_data)
    if network_config is not None:
        (tmp_path / "net.yaml").write_text(network_config)
    with_network = network_config is not None or "network_config" in expected
    spec = seed_spec(tmp_path, **({"network_config": "net.yaml"} if with_network else {}))
    assert problems(spec) == [expected.format(dir=tmp_path)]
    with pytest.raises(SpecError):
        make_seed(spec, "t")


def test_a_script_is_user_data_too(tmp_path: Path) -> None:
    (tmp_path / "user-data.yaml").write_text("#!/bin/sh\necho hello > /etc/motd\n")
    assert problems(seed_spec(tmp_path)) == []


def vmrun(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # This checkout's vmrun, not whichever one the interpreter has installed.
    environment = {**(os.environ if env is None else env), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "vmrun", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=60, env=environment)


def test_validate_reports_seed_files_with_the_spec_problems_and_exits_2(
    write_spec: Callable[[str], Path], tmp_path: Path
) -> None:
    spec = write_spec("""\
        name = "web"
        [boot]
        kernel = "k"
        [[disks]]
        id = "root"
        path = "root.qcow2"
        base = "cloud.img"
        format = "raw"
        [cloud_init]
        user_data = "missing.yaml"
    """)
    result = vmrun("validate", str(spec), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f'vmrun: error: {spec}: disks[0].format: an overlay on base is a qcow2 image: format must be "qcow2", '
        'not "raw"',
        f"vmrun: error: {spec}: cloud_init.user_data: {tmp_path}/missing.yaml: no such file",
    ]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["spec.toml"]


def test_init_with_a_base_writes_a_spec_and_user_data_that_validate(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "vms").mkdir()
    env = {"PATH": "/usr/bin:/bin", "SUDO_USER": "nobody"}
    result = vmrun("init", "web", "-o", "vms/web.toml", "--base", "images/cloud.qcow2", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    spec = validate(load_spec(tmp_path / "vms/web.toml"), "web.toml")
    [root] = spec.disks
    assert (root.base, root.path, root.size) == (tmp_path / "images/cloud.qcow2", tmp_path / "vms/web-root.qcow2",
                                                 20 * 2**30)
    assert spec.boot.disk == "root" and spec.boot.firmware == "uefi" and spec.agent.enabled
    [nic] = spec.nics
    assert (nic.mode, nic.forward) == ("user", ("tcp:auto:22",))  # reachable unedited, on a port `up` picks
    assert "# bridge = \"br0\"" in (tmp_path / "vms/web.toml").read_text()
    assert result.stderr.splitlines()[1:] == [
        "vmrun: no SSH public key found in /nonexistent/.ssh (id_ed25519.pub, id_ecdsa.pub, id_rsa.pub): nobody can "
        "log in to the guest with `vmrun ssh`; make one with: sudo -u nobody ssh-keygen -t ed25519 -f "
        "/nonexistent/.ssh/id_ed25519 -N '' (then run this init again with --force, or add the key to "
        "vms/web-user-data.yaml)",
        "vmrun: wrote vms/web.toml; edit it, then: vmrun validate vms/web.toml",
    ]
    assert spec.cloud_init is not None and spec.cloud_init.user_data == tmp_path / "vms/web-user-data.yaml"
    assert seed_file_problems(spec) == []
    config = yaml.safe_load(spec.cloud_init.user_data.read_text())
    assert config["users"][1]["name"] == "nobody"  # SUDO_USER: who ran `sudo vmrun init` (no keys at home)
    assert "qemu-guest-agent" in config["packages"]
    again = vmrun("init", "web", "-o", "vms/web.toml", "--base", "images/cloud.qcow2", cwd=tmp_path, env=env)
    assert again.returncode == 2 and "already exists" in again.stderr


def test_init_reads_the_keys_under_home_as_the_shell_and_lima_do(tmp_path: Path) -> None:
    # $HOME, not the password database's home (root's /root here), unless vmrun runs under sudo.
    (tmp_path / "home/.ssh").mkdir(parents=True)
    (tmp_path / "home/.ssh/id_ecdsa.pub").write_text("ecdsa-sha2-nistp256 AAAAec me@laptop\n")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path / "home")}
    result = vmrun("init", "web", "--base", "cloud.qcow2", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert "1 SSH key(s)" in result.stderr.splitlines()[0]
    config = yaml.safe_load((tmp_path / "web-user-data.yaml").read_text())
    assert config["users"][1]["ssh_authorized_keys"] == ["ecdsa-sha2-nistp256 AAAAec me@laptop"]


def test_starter_user_data_gives_the_user_their_keys_and_sudo(tmp_path: Path) -> None:
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh/id_rsa.pub").write_text("ssh-rsa AAAArsa a@b\n")
    (tmp_path / ".ssh/id_ed25519.pub").write_text("ssh-ed25519 AAAAed b@c\n")
    keys = public_keys(tmp_path)
    assert keys == ["ssh-ed25519 AAAAed b@c", "ssh-rsa AAAArsa a@b"]
    [default, user] = yaml.safe_load(starter_user_data("alice", keys))["users"]
    assert default == "default"
    assert user == {"name": "alice", "sudo": "ALL=(ALL) NOPASSWD:ALL", "shell": "/bin/bash",
                    "ssh_authorized_keys": keys}
    assert yaml.safe_load(starter_user_data("alice", []))["users"][1]["ssh_authorized_keys"] == []


def test_starter_without_a_base_says_the_disk_boots_nothing() -> None:
    text = starter_spec("web", "web.toml")
    assert "starts EMPTY: this VM boots nothing until you install an operating system" in text
    data = tomllib.loads(text)
    assert "base" not in data["disks"][0] and "cloud_init" not in data


def test_checked_in_debian_user_data_is_valid_cloud_config() -> None:
    spec = load_spec(SPECS / "debian.toml")
    assert seed_file_problems(spec) == []
    assert spec.cloud_init is not None
    config = yaml.safe_load(spec.cloud_init.user_data.read_text())
    assert [user["name"] for user in config["users"] if isinstance(user, dict)] == ["vmrun-demo"]
    assert "/etc/vmrun-seeded" in json.dumps(config["write_files"])
    assert spec.disks[0].base == REPO / "images/debian/debian-12.qcow2"
