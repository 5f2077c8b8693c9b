"""The command line as users and scripts see it: exit codes, stdout, one-line errors on stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .common import SPECS


def vmrun(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmrun", *args], capture_output=True, text=True, cwd=cwd, timeout=60
    )


def test_every_checked_in_spec_validates() -> None:
    result = vmrun("validate", *map(str, sorted(SPECS.glob("*.toml"))))
    assert result.returncode == 0, result.stderr


def test_five_mistakes_give_five_lines_and_exit_2(tmp_path: Path) -> None:
    spec = tmp_path / "bad.toml"
    spec.write_text(
        'name = "Bad"\n[machine]\ncpus = 2\n[boot]\nkernel = "k"\n'
        '[[nics]]\nid = "n0"\nqueues = 8\nmac = "01:00:00:00:00:01"\n'
        '[[shares]]\nid = "s"\npath = "/s"\ntag = ""\n[[vfio]]\nid = "v"\nhost = "zz"\n'
    )
    result = vmrun("validate", str(spec))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 5
    assert all(line.startswith(f"vmrun: error: {spec}: ") for line in lines)
    assert [line.split(": ")[3] for line in lines] == [
        "name", "nics[0].queues", "nics[0].mac", "shares[0].tag", "vfio[0].host",
    ]
    assert "Traceback" not in result.stderr


def test_render_json_is_the_argv(tmp_path: Path) -> None:
    result = vmrun("--run-dir", str(tmp_path), "render", str(SPECS / "db.toml"), "--json")
    assert result.returncode == 0, result.stderr
    argv = json.loads(result.stdout)
    assert argv[0] == "qemu-system-x86_64"
    assert "tap,id=net0,ifname=vmtap0,script=no,downscript=no,vhost=off,queues=4" in argv
    assert any("vectors=10" in arg for arg in argv)
    assert sum(arg.startswith("scsi-hd,bus=scsi0.0,") for arg in argv) == 2
    assert f"{tmp_path}/db/qmp.sock" in " ".join(argv)
    assert "vmrun: accel " in result.stderr


def test_render_shell_form_is_one_quoted_line() -> None:
    result = vmrun("render", str(SPECS / "tiny.toml"))
    assert result.returncode == 0
    assert result.stdout.count("\n") == 1 and "-append 'console=ttyS0 quiet'" in result.stdout


def test_missing_spec_is_a_one_line_error() -> None:
    result = vmrun("render", "no/such.toml")
    assert result.returncode == 2
    assert result.stderr == "vmrun: error: no/such.toml: cannot read spec: No such file or directory\n"


def test_a_spec_path_with_a_newline_or_escape_still_gives_one_line_per_error(tmp_path: Path) -> None:
    """A file name (or a guest's message) cannot split an error line, nor drive the terminal."""
    spec = tmp_path / "a\nvmrun: error: forged\x1b[2J.toml"
    spec.write_text('name = "Bad"\n')
    result = vmrun("up", "--json", str(spec))
    lines = result.stderr.splitlines()
    assert result.returncode == 2 and len(lines) == 2
    assert all(line.startswith(f"vmrun: error: {tmp_path}/a\\nvmrun: error: forged\\x1b[2J.toml: ") for line in lines)
    assert [entry["name"] for entry in json.loads(result.stdout)] == [str(spec)]


def test_init_writes_a_spec_that_validates_and_refuses_to_overwrite(tmp_path: Path) -> None:
    assert vmrun("init", "web1", cwd=tmp_path).returncode == 0
    assert vmrun("validate", "web1.toml", cwd=tmp_path).returncode == 0
    again = vmrun("init", "web1", cwd=tmp_path)
    assert again.returncode == 2 and "already exists" in again.stderr
    bad = vmrun("init", "Web_1", cwd=tmp_path)
    assert bad.returncode == 2 and "not a valid VM name" in bad.stderr


def test_version_and_help() -> None:
    assert vmrun("--version").stdout.startswith("vmrun ")
    help_text = vmrun("--help").stdout
    for command in ("validate", "render", "init"):
        assert command in help_text


def test_a_run_directory_named_like_a_command_is_not_taken_for_the_command(tmp_path: Path) -> None:
    result = vmrun("--run-dir", "up", "--state-dir=down", "status", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_usage_errors_name_the_command_and_list_the_commands() -> None:
    missing = vmrun("--debug", "render")
    assert missing.returncode == 2
    assert "vmrun render: error: the following arguments are required: SPEC" in missing.stderr
    unknown = vmrun("rendr", "x.toml")
    assert unknown.returncode == 2 and "invalid choice: 'rendr'" in unknown.stderr and "'validate'" in unknown.stderr


@pytest.mark.parametrize("command", [["status", "--json"], ["render", str(SPECS / "tiny.toml"), "--json"],
                                     ["host", "check"]], ids=["status", "render", "host-check"])
def test_a_closed_stdout_ends_quietly_with_141(tmp_path: Path, command: list[str]) -> None:
    """`vmrun status --json | head -c1`: the reader has gone when vmrun writes. Deterministic here:
    the pipe's read end is closed before vmrun starts."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run([sys.executable, "-m", "vmrun", "--run-dir", str(tmp_path), *command],
                                stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write_end)
    assert result.returncode == 141
    assert [line for line in result.stderr.splitlines() if "vmrun: accel" not in line] == []


def test_export_define_goes_only_with_libvirt_and_through_the_host_layer(tmp_path: Path) -> None:
    systemd = vmrun("export", str(SPECS / "tiny.toml"), "--format", "systemd", "--define")
    assert systemd.returncode == 2 and "--define goes with --format libvirt" in systemd.stderr
    # Against a fake host tree, virsh is not run: nothing is defined in this machine's libvirt.
    fake = vmrun("--host-root", str(tmp_path), "export", str(SPECS / "tiny.toml"), "--format", "libvirt",
                 "--define", "-o", str(tmp_path / "tiny.xml"))
    assert fake.returncode == 3 and "virsh define: not run against the host tree" in fake.stderr
    assert (tmp_path / "tiny.xml").read_text().startswith('<domain type="')


def test_extra_args_reaching_vmruns_files_are_refused_with_this_commands_roots(tmp_path: Path) -> None:
    run, state, elsewhere = tmp_path / "run", tmp_path / "state", tmp_path / "elsewhere"
    (tmp_path / "through-a-link").symlink_to(run)
    spec = tmp_path / "web.toml"
    extra_args = [
        "-chardev", f"socket,id=steal,path={run}/db/qmp.sock,server=on,wait=off",  # another VM's QMP socket
        "-drive", f"if=none,id=seed,file={state}/db/seed.iso,readonly=on",  # another VM's user-data
        "-chardev", f"socket,id=linked,path={tmp_path}/through-a-link/db/qga.sock,server=on",
        "-serial", f"unix:{run}/../run/web/console.sock",
        "-drive", f"if=none,id=mine,file={state}/web/data.qcow2",  # the user's own image beside the state
        "-chardev", f"socket,id=own,path={elsewhere}/qmp.sock,server=on,wait=off",
    ]
    spec.write_text(f'name = "web"\n[boot]\nkernel = "k"\n[qemu]\nextra_args = {json.dumps(extra_args)}\n')
    result = vmrun("--run-dir", str(run), "--state-dir", str(state), "validate", str(spec))
    assert result.returncode == 2
    hint = " (hint: name a path of your own)"
    assert result.stderr.splitlines() == [
        f"vmrun: error: {spec}: qemu.extra_args[{index}]: {path} is vmrun's own (its run directory, a VM's "
        f"firmware variables or seed){hint}"
        for index, path in ((1, f"{run}/db/qmp.sock"), (3, f"{state}/db/seed.iso"),
                            (5, f"{tmp_path}/through-a-link/db/qga.sock"), (7, f"{run}/../run/web/console.sock"))
    ]
    assert vmrun("--run-dir", str(tmp_path / "other-run"), "--state-dir", str(tmp_path / "other-state"),
                 "validate", str(spec)).returncode == 0


def test_the_console_script_pauses_the_collector_for_its_start_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """A short command runs without cyclic collection; one that runs on (`up` waiting for guests, `logs -f`) gets
    it back, or the garbage of hours of waiting would never be freed."""
    import gc
    import time

    import vmrun.__main__ as entry

    collecting_during_the_command = []
    monkeypatch.setattr("vmrun.cli.main.main_exit", lambda: collecting_during_the_command.append(gc.isenabled()))
    monkeypatch.setattr(entry, "COLLECTOR_PAUSE", 0.05)
    try:
        entry.main()
        assert collecting_during_the_command == [False]
        deadline = time.monotonic() + 10
        while not gc.isenabled() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert gc.isenabled()
    finally:
        gc.enable()


def test_diff_json_lists_an_invalid_spec_as_up_refuses_it_and_down_dry_run_names_what_down_would_stop(
        tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text('name = "a"\n[boot]\nkernel = "k"\n')
    (tmp_path / "bad.toml").write_text('name = "bad"\n[machine]\ncpus = 0\n[boot]\nkernel = "k"\n')
    roots = ["--run-dir", str(tmp_path / "run"), "--state-dir", str(tmp_path / "state")]
    diff = vmrun(*roots, "diff", "--json", str(tmp_path))
    up = vmrun(*roots, "up", "--json", str(tmp_path / "bad.toml"))
    assert diff.returncode == up.returncode == 2
    [refused] = json.loads(up.stdout)
    assert json.loads(diff.stdout) == [
        {"name": refused["name"], "spec": refused["name"], "state": None, "drift": None,
         "differences": [], "errors": refused["errors"], "hint": refused["hint"]},
        {"name": "a", "spec": str(tmp_path / "a.toml"), "state": "stopped", "drift": None,
         "differences": []},
    ]
    assert refused["errors"] == [f"{tmp_path / 'bad.toml'}: machine.cpus: must be at least 1, got 0"]
    # down reads only the names; --dry-run says which VMs have a run to stop and touches nothing.
    (tmp_path / "run" / "bad").mkdir(parents=True)
    dry = vmrun(*roots, "down", "--dry-run", "--json", str(tmp_path))
    assert dry.returncode == 0, dry.stderr
    assert [(fate["name"], fate["result"], fate["outcome"]) for fate in json.loads(dry.stdout)] == [
        ("a", "not running", "not running"), ("bad", "stopped", "would stop")]
    assert (tmp_path / "run" / "bad").is_dir()
