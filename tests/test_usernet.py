"""User-mode NICs and `vmrun ssh`: forwards as validate reads them, the argv, a plan without host changes,
the ethtool step and host drift leaving them out, export, a taken port named, and how ssh finds the guest."""

from __future__ import annotations

import errno
import os
import socket
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from vmrun.cli.arguments import options_after_name, ssh_options
from vmrun.cli.main import main
from vmrun.cli.parser import build_parser
from vmrun.errors import SpecError, UsageError
from vmrun.export.kubevirt import CloudInitTexts, kubevirt_manifests
from vmrun.export.libvirt import libvirt_domain
from vmrun.guest.agent import GuestInterface
from vmrun.guest.ssh import guest_user, ssh_argv, ssh_config, ssh_target, user_data_user
from vmrun.host.ports import bind_error
from vmrun.host.user import private_keys
from vmrun.qemu.render import render
from vmrun.spec.check import check_spec, validate
from vmrun.spec.load import parse_spec
from vmrun.spec.model import Accel, Nic, Spec
from vmrun.spec.usernet import Forward, parse_forward, refused_forward, with_host_ports
from vmrun.state.hostdrift import host_differences

from .common import GOLDEN_FACTS, GOOD_SPEC, golden_paths
from .fakehost import build_host_tree
from .test_export_kubevirt import ONE_NIC
from .test_hooks import FakeGuest, run_step
from .test_preflight import USER_FACTS, fake_host, make_spec, plan_for

USER_NIC = {"id": "net0", "mode": "user"}


def spec_with_nics(*nics: dict[str, Any], **sections: Any) -> Spec:
    data = {**tomllib.loads(GOOD_SPEC), "nics": list(nics), **sections}
    return parse_spec(data, source="t", base=Path("/specs"))


def problems(*nics: dict[str, Any]) -> list[str]:
    return [str(problem) for problem in check_spec(spec_with_nics(*nics))]


@pytest.mark.parametrize(("text", "expected"), [
    ("tcp:2222:22", Forward("tcp", "127.0.0.1", 2222, 22)),
    ("udp:0.0.0.0:5353:53", Forward("udp", "0.0.0.0", 5353, 53)),
    ("tcp:192.0.2.7:65535:1", Forward("tcp", "192.0.2.7", 65535, 1)),
    ("tcp:auto:22", Forward("tcp", "127.0.0.1", 0, 22)),
])
def test_a_forward_listens_on_loopback_unless_it_names_an_address(text: str, expected: Forward) -> None:
    assert parse_forward(text) == expected


HINT = (' (hint: PROTO:[ADDRESS:]HOSTPORT:GUESTPORT, e.g. "tcp:2222:22", "tcp:0.0.0.0:2222:22" or "tcp:auto:22" '
        '(a free host port, picked at up))')


@pytest.mark.parametrize(("text", "expected"), [
    ("2222:22", "'2222:22' is not a port forward"),
    ("tcp:a:b:c:d", "'tcp:a:b:c:d' is not a port forward"),
    ("sctp:2222:22", "protocol 'sctp' is not tcp or udp"),
    ("TCP:2222:22", "protocol 'TCP' is not tcp or udp"),
    ("tcp:localhost:2222:22", "'localhost' is not an IPv4 address (qemu forwards from IPv4 only)"),
    ("tcp:::1:2222:22", "'tcp:::1:2222:22' is not a port forward"),
    ("tcp:a,b:2222:22", "'a,b' is not an IPv4 address (qemu forwards from IPv4 only)"),
    ("tcp:0:22", "host port '0' is not a number from 1 to 65535"),
    ("tcp:65536:22", "host port '65536' is not a number from 1 to 65535"),
    ("tcp:2222:-1", "guest port '-1' is not a number from 1 to 65535"),
    ("tcp:2222:２２", "guest port '２２' is not a number from 1 to 65535"),
    ("tcp: 2222:22", "host port ' 2222' is not a number from 1 to 65535"),
])
def test_malformed_forwards_are_refused_with_their_path(text: str, expected: str) -> None:
    assert problems({**USER_NIC, "forward": [text]}) == [f"nics[0].forward[0]: {expected}{HINT}"]


def test_auto_ports_never_clash_and_up_puts_the_picked_ones_in_the_spec_it_runs() -> None:
    nics = ({**USER_NIC, "forward": ["tcp:auto:22", "tcp:0.0.0.0:auto:80", "udp:5353:53"]},
            {"id": "net1", "mode": "user", "forward": ["tcp:auto:22"]})
    assert problems(*nics) == []
    spec = spec_with_nics(*nics)
    picked = iter((40001, 40002, 40003))
    asked: list[tuple[str, int, str]] = []

    def pick(nic: Nic, index: int, forward: Forward) -> int:
        asked.append((nic.id, index, forward.text))
        return next(picked)

    runs = with_host_ports(spec, pick)
    assert [nic.forward for nic in runs.nics] == [
        ("tcp:127.0.0.1:40001:22", "tcp:0.0.0.0:40002:80", "udp:5353:53"), ("tcp:127.0.0.1:40003:22",)]
    assert asked == [("net0", 0, "tcp:127.0.0.1:auto:22"), ("net0", 1, "tcp:0.0.0.0:auto:80"),
                     ("net1", 0, "tcp:127.0.0.1:auto:22")]
    assert ssh_target(runs, no_agent) == ("127.0.0.1", 40001)
    argv = render(validate(runs, "t"), GOLDEN_FACTS, golden_paths(runs.name))
    assert "hostfwd=tcp:127.0.0.1:40001-:22" in " ".join(argv)


def test_no_host_port_is_forwarded_twice_in_a_vm_a_wildcard_address_taking_it_on_every_address() -> None:
    assert problems(
        {**USER_NIC, "forward": ["tcp:2222:22", "udp:2222:22", "tcp:127.0.0.2:2223:22"]},
        {"id": "net1", "mode": "user", "forward": ["tcp:127.0.0.1:2222:80", "tcp:0.0.0.0:2223:80",
                                                   "tcp:127.0.0.3:2224:22", "udp:127.0.0.3:2224:22"]},
    ) == [
        "nics[1].forward[0]: host port 127.0.0.1:2222 (tcp) is already forwarded by nics[0].forward[0] "
        "(hint: forward another host port)",
        "nics[1].forward[1]: host port 0.0.0.0:2223 (tcp) is already forwarded by nics[0].forward[2] "
        "(hint: forward another host port)",
    ]


def test_what_belongs_to_one_mode_is_refused_on_the_other() -> None:
    assert problems(
        {**USER_NIC, "tap": "vmtap0", "bridge": "br0", "vhost": True, "queues": 2},
        {"id": "net1", "mode": "user", "vhost": False},
        {"id": "net2", "forward": ["tcp:2222:22"], "restrict": True},
    ) == [
        "nics[0].tap: a user-mode NIC has no tap (hint: remove it, or set mode = \"tap\")",
        "nics[0].bridge: a user-mode NIC has no tap (hint: remove it, or set mode = \"tap\")",
        "nics[0].vhost: vhost-net does not apply to a user-mode NIC (hint: remove it)",
        "nics[0].queues: multiqueue does not apply to a user-mode NIC (qemu's user network moves packets on one "
        "queue) (hint: remove it, or use a tap NIC)",
        "nics[1].vhost: vhost-net does not apply to a user-mode NIC (hint: remove it)",
        'nics[2].forward: only applies to mode = "user"',
        'nics[2].restrict: only applies to mode = "user"',
    ]


def test_a_mode_is_tap_or_user() -> None:
    with pytest.raises(SpecError, match=r"nics\[0\].mode: must be one of tap, user, got 'slirp'"):
        spec_with_nics({"id": "net0", "mode": "slirp"})


def test_user_nics_derive_no_tap_so_their_derived_names_cannot_clash() -> None:
    # Both would derive the tap "web.net0" if they had one; the MACs still differ by id.
    assert problems(USER_NIC, {"id": "net1", "mode": "user"}) == []


def test_user_nic_argv_restricts_and_forwards_on_the_user_backend_with_no_multiqueue() -> None:
    spec = validate(spec_with_nics(
        {**USER_NIC, "restrict": True, "forward": ["tcp:2222:22", "udp:0.0.0.0:5353:53"]},
        {"id": "net1", "mode": "user", "mac": "52:54:00:12:34:56"},
    ), "t")
    argv = render(spec, GOLDEN_FACTS, golden_paths(spec.name))
    start = argv.index("-netdev")
    assert argv[start:start + 8] == [
        "-netdev", "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=udp:0.0.0.0:5353-:53",
        "-device", f"virtio-net-pci,netdev=net0,id=net0,mac={spec.nics[0].guest_mac}",
        "-netdev", "user,id=net1,restrict=off",
        "-device", "virtio-net-pci,netdev=net1,id=net1,mac=52:54:00:12:34:56",
    ]
    assert not any(arg.startswith("tap,") for arg in argv)


def test_a_user_nic_needs_no_host_change_nor_root(tmp_path: Path) -> None:
    spec = make_spec(nics=[{"id": "n0", "mode": "user", "forward": ["tcp:2222:22"]}])
    plan = plan_for(spec, fake_host(tmp_path), USER_FACTS)  # no /dev/vhost-net, not root
    assert plan.to_json()["changes"] == []
    assert [(check.name, check.status.value, check.message) for check in plan.findings if check.name == "nics n0"] \
        == [("nics n0", "ok", "user-mode network in qemu, no host change (tcp 127.0.0.1:2222 -> guest port 22)")]
    assert not plan.failures
    # The same NIC on a tap: a non-root user cannot create it.
    assert plan_for(make_spec(nics=[{"id": "n0"}]), fake_host(tmp_path / "other"), USER_FACTS).failures


def test_the_ethtool_step_leaves_user_nics_alone(tmp_path: Path) -> None:
    spec = spec_with_nics(USER_NIC, {"id": "net1", "queues": 2})
    guest = FakeGuest(spec.nics[1].guest_mac, combined=2)
    said = run_step(tmp_path, guest, spec)
    assert guest.commands == [["ethtool", "-l", "eth0"]]
    assert [line.split(" ✓")[0] for line in said] == ["ethtool net1 eth0 combined 2"]


def test_a_user_nic_has_nothing_on_the_host_to_drift(tmp_path: Path) -> None:
    host = fake_host(tmp_path)
    spec = spec_with_nics(USER_NIC, {"id": "net1"}, vfio=[])
    assert host_differences(spec, host, as_root=True) == ["nics[1]: tap web.net1 is gone from the host"]


def test_libvirt_gets_a_user_interface_and_notes_for_what_it_cannot_take() -> None:
    spec = spec_with_nics({**USER_NIC, "restrict": True, "forward": ["tcp:2222:22"]})
    exported = libvirt_domain(spec, accel=Accel.TCG, vhost_net=False, seed=Path("/seed.iso"))
    [interface] = ET.fromstring(exported.text).findall("devices/interface")
    assert interface.get("type") == "user" and interface.find("source") is None
    assert [child.tag for child in interface] == ["mac", "model", "alias"]
    assert [note for note in exported.notes if note.startswith("nics")] == [
        "nics net0: libvirt's user network (slirp) takes no port forwards (<portForward> needs the passt backend); "
        "forward by hand: tcp 127.0.0.1:2222 -> guest port 22",
        "nics net0: libvirt has no restrict: the guest can reach the host's networks",
    ]


QEMU_REFUSAL = ("qemu failed to start: qemu-system-x86_64: -netdev user,id=net1,restrict=off,"
                "hostfwd=tcp:0.0.0.0:8080-:80: Could not set up host forwarding rule 'tcp:0.0.0.0:8080-:80'")


def test_a_taken_host_port_is_named_by_its_forward() -> None:
    spec = spec_with_nics({**USER_NIC, "forward": ["tcp:2222:22"]},
                          {"id": "net1", "mode": "user", "forward": ["udp:0.0.0.0:8080:80", "tcp:0.0.0.0:8080:80"]})
    refused = refused_forward(spec, QEMU_REFUSAL, lambda forward: errno.EADDRINUSE)
    assert refused is not None and refused.exit_code == 4
    assert str(refused) == ("nics[1].forward[1] (tcp:0.0.0.0:8080:80): qemu could not listen on host port "
                            "0.0.0.0:8080 (tcp): something else holds it")
    assert refused_forward(spec, "qemu failed to start: could not open disk image", bind_error) is None


@pytest.mark.parametrize(("forward", "error", "said", "hint"), [
    ("tcp:80:80", errno.EACCES, "127.0.0.1:80 (tcp): only root may listen on a port below 1024",
     "forward a host port from 1024 up, or run vmrun as root"),
    ("tcp:192.0.2.1:8080:80", errno.EADDRNOTAVAIL, "192.0.2.1:8080 (tcp): 192.0.2.1 is no address of this host",
     "forward from 127.0.0.1, 0.0.0.0 (every address) or one `ip -4 addr` lists"),
])
def test_a_refused_forward_says_why_the_host_refused_it(forward: str, error: int, said: str, hint: str) -> None:
    spec = spec_with_nics({**USER_NIC, "forward": [forward]})
    rule = parse_forward(forward).hostfwd
    refused = refused_forward(spec, f"Could not set up host forwarding rule '{rule}'", lambda _: error)
    assert refused is not None
    assert (str(refused), refused.hint) == (f"nics[0].forward[0] ({forward}): qemu could not listen on host port "
                                            f"{said}", hint)


def test_the_host_tells_a_foreign_address_from_a_port_in_use() -> None:
    assert bind_error(parse_forward("tcp:192.0.2.1:8080:80")) == errno.EADDRNOTAVAIL
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        assert bind_error(parse_forward(f"tcp:{taken}:22")) == errno.EADDRINUSE
    assert bind_error(parse_forward(f"tcp:{taken}:22")) is None


def test_validate_warns_a_user_who_is_not_root_of_a_port_below_1024(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    spec = tmp_path / "web.toml"
    spec.write_text('name = "web"\n[boot]\nkernel = "k"\n[[nics]]\nid = "net0"\nmode = "user"\n'
                    'forward = ["tcp:80:80", "tcp:8080:8080"]\n')
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert main(["validate", str(spec)]) == 0
    assert capsys.readouterr().err.splitlines() == [
        f"vmrun: {spec}: ok",
        f"vmrun: warning: {spec}: nics[0].forward[0]: host port 80 is below 1024: only root may listen there "
        "(hint: run vmrun up as root, or forward a host port from 1024 up)",
    ]


# --- vmrun ssh ----------------------------------------------------------------------------------------


def no_agent() -> tuple[GuestInterface, ...]:
    raise AssertionError("the agent is not asked when a forward says where sshd is")


@pytest.mark.parametrize(("forward", "expected"), [
    (["udp:2222:22", "tcp:2223:80", "tcp:2224:22"], ("127.0.0.1", 2224)),
    (["tcp:0.0.0.0:2225:22"], ("127.0.0.1", 2225)),
    (["tcp:192.0.2.1:2226:22"], ("192.0.2.1", 2226)),
])
def test_ssh_goes_through_the_first_tcp_forward_of_port_22(forward: list[str], expected: tuple[str, int]) -> None:
    assert ssh_target(spec_with_nics({**USER_NIC, "forward": forward}), no_agent) == expected


def test_without_a_forward_ssh_takes_the_first_address_the_host_can_reach() -> None:
    spec = spec_with_nics(USER_NIC, {"id": "net1", "bridge": "br0"})
    interfaces = (
        GuestInterface("lo", "00:00:00:00:00:00", ("127.0.0.1/8", "::1/128")),
        GuestInterface("eth0", spec.nics[0].guest_mac, ("10.0.2.15/24",)),  # inside qemu
        GuestInterface("eth1", spec.nics[1].guest_mac, ("fe80::1/64", "192.0.2.9/24", "192.0.2.10/24")),
    )
    assert ssh_target(spec, lambda: interfaces) == ("192.0.2.9", 22)
    with pytest.raises(UsageError, match="web: no route to the guest's port 22: no user-mode NIC forwards it"):
        ssh_target(spec, lambda: interfaces[:2])
    agentless = spec_with_nics(USER_NIC, agent={"enabled": False})
    with pytest.raises(UsageError, match="without the agent vmrun knows no guest address"):
        ssh_target(agentless, no_agent)


@pytest.mark.parametrize(("user_data", "expected"), [
    ("#cloud-config\nusers:\n  - default\n  - name: alice\n  - name: bob\n", "alice"),
    ("#cloud-config\nusers: [default, carol]\n", "carol"),
    ("#cloud-config\nusers: default, dave\n", "dave"),
    ("#cloud-config\nuser: erin\nusers: [default, frank]\n", "erin"),
    ("#cloud-config\nuser: {name: gina}\n", "gina"),
    ("#cloud-config\nsystem_info:\n  default_user:\n    name: hana\nusers: [default, ivan]\n", "hana"),
    ("#cloud-config\nusers: [default]\n", None),
    ("#cloud-config\npackages: [sl]\n", None),
    ("#!/bin/sh\necho hi\n", None),
    ("#cloud-config\nusers: [\n", None),
])
def test_the_ssh_user_is_the_one_the_user_data_creates(tmp_path: Path, user_data: str, expected: str | None) -> None:
    path = tmp_path / "user-data.yaml"
    path.write_text(user_data)
    assert user_data_user(path) == expected


def test_without_a_user_in_user_data_ssh_logs_in_as_the_invoking_user(tmp_path: Path) -> None:
    (tmp_path / "u.yaml").write_text("#cloud-config\nusers: [default, alice]\n")
    assert guest_user(spec_with_nics(USER_NIC, cloud_init={"user_data": str(tmp_path / "u.yaml")}), "me") == "alice"
    assert guest_user(spec_with_nics(USER_NIC), "me") == "me"


def test_ssh_argv_keeps_host_keys_per_vm_and_the_command_after_the_host() -> None:
    assert ssh_argv(address="127.0.0.1", port=2222, user="alice", known_hosts=Path("/var/lib/vmrun/web/known_hosts"),
                    identities=[Path("/home/alice/.ssh/id_ed25519")], command=["ls", "-l", "a b"]) == [
        "ssh", "-p", "2222", "-l", "alice",
        "-o", 'UserKnownHostsFile="/var/lib/vmrun/web/known_hosts"', "-o", "StrictHostKeyChecking=accept-new",
        "-o", 'IdentityFile="/home/alice/.ssh/id_ed25519"', "--", "127.0.0.1", "ls", "-l", "a b",
    ]


@pytest.mark.parametrize("words", [
    ["ssh", "web", "-o", "ForwardAgent=yes", "-l", "bob", "-o", "LocalForward=8080 127.0.0.1:80", "--", "ls", "-l"],
    ["ssh", "-o", "ForwardAgent=yes", "-l", "bob", "web", "-o", "LocalForward=8080 127.0.0.1:80", "ls", "-l"],
])
def test_ssh_passes_options_through_before_its_own_wherever_they_are_given(words: list[str]) -> None:
    args = options_after_name(build_parser().parse_args(words), ssh_options)
    command = args.command_line[1:] if args.command_line[:1] == ["--"] else args.command_line
    argv = ssh_argv(address="127.0.0.1", port=40001, user=args.user, known_hosts=Path("/s/web/known_hosts"),
                    identities=[], options=args.option, command=command)
    assert argv == ["ssh", "-o", "ForwardAgent=yes", "-o", "LocalForward=8080 127.0.0.1:80", "-p", "40001",
                    "-l", "bob", "-o", 'UserKnownHostsFile="/s/web/known_hosts"', "-o",
                    "StrictHostKeyChecking=accept-new", "--", "127.0.0.1", "ls", "-l"]


def test_ssh_config_is_a_host_block_with_what_vmrun_ssh_uses() -> None:
    assert ssh_config(host="vmrun-web", address="127.0.0.1", port=40001, user="alice",
                      known_hosts=Path("/var/lib/vmrun/web/known_hosts"),
                      identities=[Path("/home/alice/.ssh/id_ed25519")]) == (
        "Host vmrun-web\n"
        "  HostName 127.0.0.1\n"
        "  Port 40001\n"
        "  User alice\n"
        '  UserKnownHostsFile "/var/lib/vmrun/web/known_hosts"\n'
        "  StrictHostKeyChecking accept-new\n"
        '  IdentityFile "/home/alice/.ssh/id_ed25519"\n')
    with pytest.raises(UsageError, match="cannot be written in an ssh_config"):
        ssh_config(host="vmrun-web", address="127.0.0.1", port=22, user="a b", known_hosts=Path("/k"), identities=[])


@pytest.mark.parametrize(("state_dir", "option"), [
    # ssh splits an option's value at white space into several files and writes new keys to the first
    # (/home/me/My, outside vmrun's roots); it expands %d, %u... and reads \\ and \" inside quotes.
    ("/home/me/My VMs", 'UserKnownHostsFile="/home/me/My VMs/web/known_hosts"'),
    ("/srv/100%d", 'UserKnownHostsFile="/srv/100%%d/web/known_hosts"'),
    ('/srv/a"b\\c', 'UserKnownHostsFile="/srv/a\\"b\\\\c/web/known_hosts"'),
])
def test_the_known_hosts_file_reaches_ssh_as_one_path_whatever_the_state_dir_holds(state_dir: str,
                                                                                    option: str) -> None:
    argv = ssh_argv(address="127.0.0.1", port=2222, user="alice", known_hosts=Path(state_dir, "web", "known_hosts"),
                    identities=[], command=[])
    assert argv[argv.index("StrictHostKeyChecking=accept-new") - 2] == option


def test_a_key_path_reaches_ssh_as_written() -> None:
    """ssh checks a -i path as written but opens it %-expanded: a key in "100%d" could not be used."""
    argv = ssh_argv(address="127.0.0.1", port=22, user="alice", known_hosts=Path("/k"),
                    identities=[Path("/home/alice/My Keys/100%d")], command=[])
    assert argv[argv.index("--") - 1] == 'IdentityFile="/home/alice/My Keys/100%%d"'
    assert "-i" not in argv


@pytest.mark.parametrize("where", ["known_hosts", "identity"])
def test_a_path_ssh_would_fill_with_a_variable_is_refused(where: str) -> None:
    """ssh replaces ${HOME} in these paths and has no escape for it: the keys would be read, or host keys
    written, somewhere else."""
    paths = {"known_hosts": Path("/k"), "identity": Path("/k")} | {where: Path("/srv/${HOME}/x")}
    with pytest.raises(UsageError, match=r"\$\{\.\.\.\}"):
        ssh_argv(address="127.0.0.1", port=22, user="alice", known_hosts=paths["known_hosts"],
                 identities=[paths["identity"]], command=[])


def test_under_sudo_the_keys_are_the_callers_own_private_halves(tmp_path: Path) -> None:
    ssh_dir = build_host_tree(tmp_path / "host", []) / "home" / "alice" / ".ssh"
    ssh_dir.mkdir(parents=True)
    for name in ("id_rsa", "id_rsa.pub", "id_ed25519.pub", "id_other"):
        (ssh_dir / name).write_text("key")
    assert private_keys(ssh_dir.parent) == [ssh_dir / "id_rsa"]
    assert private_keys(None) == []


def test_kubevirt_puts_a_user_nic_on_the_pod_network_and_says_what_it_has_not() -> None:
    user_nic = ONE_NIC.replace("queues = 2\n", 'mode = "user"\nrestrict = true\nforward = ["tcp:2222:22"]\n')
    spec = validate(parse_spec(tomllib.loads(user_nic), source="t", base=Path("/")), "t")
    exported = kubevirt_manifests([("test", spec, CloudInitTexts())])
    assert "masquerade: {}" in exported.text and "ethtool" not in exported.text
    assert [note for note in exported.notes if note.startswith("web: nics")] == [
        "web: nics net0: restrict = true shuts the guest in; on the pod network (masquerade), which is open: the guest "
        "reaches every pod and, through the node, beyond, and every pod reaches the guest's ports: shut it in with a "
        "NetworkPolicy",
        "web: nics net0: the pod network has no port forwards: reach the guest through a Service"]
