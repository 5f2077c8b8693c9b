"""Many VMs in one command: spec files from directories, tasks in parallel up to --jobs, each VM's fate
and the worst exit code."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import attrs
import pytest

from vmrun.errors import (
    AgentError,
    ConfigurationDiffers,
    LaunchError,
    PreflightError,
    SpecError,
    UsageError,
    VmrunError,
)
from vmrun.progress import Say
from vmrun.run.fleet import Fate, Task, run_all, summary, worst
from vmrun.run.lifecycle import Outcome
from vmrun.spec.load import spec_files
from vmrun.spec.model import Spec

WAIT = 2.0  # how long a task waits for the others to start: only used up when one cannot start


def collect() -> tuple[list[str], list[tuple[str, Exception]], Say]:
    said: list[str] = []
    reported: list[tuple[str, Exception]] = []
    return said, reported, said.append


def failing(error: Exception) -> Task:
    def task(say: Say, interrupted: threading.Event) -> Fate:
        raise error
    return task


def succeeding(name: str, outcome: str = "started") -> Task:
    def task(say: Say, interrupted: threading.Event) -> Fate:
        say(f"{name} is up")
        return Fate(name, outcome)
    return task


@pytest.mark.parametrize(("codes", "expected"), [
    ([], 0),
    ([0, 0], 0),
    ([0, 3, 2], 3),
    ([5, 4, 2], 5),
    ([6, 1, 5], 1),  # a bug in vmrun outranks every user-facing failure
    ([1, 130, 5], 130),  # an interruption outranks a bug
])
def test_the_worst_exit_code_of_many(codes: list[int], expected: int) -> None:
    assert worst(codes) == expected


def test_each_vms_error_becomes_its_fate_and_the_others_go_on() -> None:
    said, reported, say = collect()
    agent = AgentError("the guest agent did not answer")
    fates = run_all([("a", succeeding("a")), ("b", failing(agent)), ("c", failing(LaunchError("qemu died")))],
                    jobs=None, say=say, report=lambda label, error: reported.append((label, error)))
    assert fates == [Fate("a", "started"),
                     Fate("b", "failed (exit 5)", 5, result="failed", errors=("the guest agent did not answer",)),
                     Fate("c", "failed (exit 4)", 4, result="failed", errors=("qemu died",))]
    assert [(label, str(error)) for label, error in reported] == [
        ("b", "the guest agent did not answer"), ("c", "qemu died")]
    assert said == ["a: a is up"]  # with several VMs, each line carries the VM's label
    assert summary(fates) == "3 VMs: a started, b failed (exit 5), c failed (exit 4)"
    assert worst([fate.exit_code for fate in fates]) == 5


def test_a_bug_in_one_worker_is_that_vms_fate_exit_1_and_the_others_finish() -> None:
    said, reported, say = collect()
    bug = KeyError("state")
    fates = run_all([("a", failing(bug)), ("b", succeeding("b")), ("c", failing(PreflightError("refused")))],
                    jobs=2, say=say, report=lambda label, error: reported.append((label, error)))
    bug_fate = Fate("a", "failed (a bug in vmrun)", 1, result="failed", errors=("internal error: KeyError: 'state'",))
    assert fates == [bug_fate, Fate("b", "started"),
                     Fate("c", "failed (exit 3)", 3, result="failed", errors=("refused",))]
    assert reported[0] == ("a", bug)
    assert worst([fate.exit_code for fate in fates]) == 1


def test_one_vm_is_told_without_its_label() -> None:
    said, reported, say = collect()
    fates = run_all([("solo", succeeding("solo")), ], jobs=None, say=say,
                    report=lambda label, error: reported.append((label, error)))
    assert fates == [Fate("solo", "started")] and said == ["solo is up"]
    error = UsageError("solo is already running")
    run_all([("solo", failing(error))], jobs=None, say=say, report=lambda label, e: reported.append((label, e)))
    assert reported == [("", error)]


@attrs.define
class Meeting:
    """Tasks that each wait for all the others to start (in vain after WAIT), counting how many run at once."""

    names: list[str]
    running: int = 0
    most_at_once: int = 0
    lock: threading.Lock = attrs.field(factory=threading.Lock)
    started: dict[str, threading.Event] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.started = {name: threading.Event() for name in self.names}

    def tasks(self) -> list[tuple[str, Task]]:
        return [(name, self._task(name)) for name in self.names]

    def _task(self, name: str) -> Task:
        def task(say: Say, interrupted: threading.Event) -> Fate:
            with self.lock:
                self.running += 1
                self.most_at_once = max(self.most_at_once, self.running)
            self.started[name].set()
            for event in self.started.values():
                event.wait(WAIT)
            with self.lock:
                self.running -= 1
            return Fate(name, "started")
        return task


def test_without_jobs_every_vm_runs_at_once() -> None:
    meeting = Meeting(["a", "b", "c", "d"])
    fates = run_all(meeting.tasks(), jobs=None, say=lambda line: None, report=lambda label, error: None)
    assert [fate.name for fate in fates] == ["a", "b", "c", "d"]
    assert meeting.most_at_once == 4


def test_jobs_caps_how_many_run_at_once() -> None:
    meeting = Meeting(["a", "b", "c"])
    fates = run_all(meeting.tasks(), jobs=2, say=lambda line: None, report=lambda label, error: None)
    assert [fate.name for fate in fates] == ["a", "b", "c"]
    # a and b wait for c together; c starts only once one of them gives up.
    assert meeting.most_at_once == 2


def test_spec_files_take_specs_as_given_and_directories_sorted(tmp_path: Path) -> None:
    (tmp_path / "fleet").mkdir()
    for name in ("b.toml", "a.toml", "notes.txt"):
        (tmp_path / "fleet" / name).write_text("")
    assert spec_files([str(tmp_path / "fleet"), "one.toml"]) == [
        tmp_path / "fleet" / "a.toml", tmp_path / "fleet" / "b.toml", Path("one.toml")]
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no \\*.toml specs in this directory"):
        spec_files([str(tmp_path / "empty")])


def test_a_spec_error_keeps_its_exit_code_in_the_fate() -> None:
    said, reported, say = collect()
    error: VmrunError = SpecError("b.toml", [])
    [fate] = run_all([("b", failing(error))], jobs=None, say=say, report=lambda label, e: reported.append((label, e)))
    assert fate == Fate("b", "failed (exit 2)", 2, result="failed")


def _down_with_a_bug_in_a(name: str, *args: object, **options: object) -> str | None:
    if name == "a":
        raise RuntimeError("a bug while stopping a")
    return None


def test_cli_a_bug_in_one_vms_down_is_told_as_such_exits_1_and_the_summary_lists_every_vm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from vmrun.cli.main import main

    # Only a test can put a bug into vmrun's down; the command around it is the real one.
    monkeypatch.setattr("vmrun.run.ending.down", _down_with_a_bug_in_a)
    assert main(["--run-dir", str(tmp_path), "down", "a", "b"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "vmrun: internal error: a: RuntimeError: a bug while stopping a (rerun with --debug)",
        "vmrun: b: b is not running",
        "vmrun: 2 VMs: a failed (a bug in vmrun), b not running",
    ]
    with pytest.raises(RuntimeError, match="a bug while stopping a"):
        main(["--debug", "--run-dir", str(tmp_path), "down", "a", "b"])


def test_a_vm_running_with_another_configuration_is_refused_in_one_word_with_vmruns_message() -> None:
    said, reported, say = collect()
    differs = ConfigurationDiffers("b runs with another configuration: machine.memory: 64M → 96M",
                                   hint="vmrun up --restart b.toml applies it (a graceful down, then up)")
    [fate] = run_all([("b", failing(differs))], jobs=None, say=say, report=lambda label, e: reported.append((label, e)))
    assert fate.to_json() == {
        "name": "b", "spec": None, "result": "refused", "outcome": "failed (exit 2)", "exit_code": 2,
        "errors": ["b runs with another configuration: machine.memory: 64M → 96M"],
        "hint": "vmrun up --restart b.toml applies it (a graceful down, then up)",
    }


def _up_by_name(spec: Spec, *args: object, **options: object) -> Outcome:
    if spec.name == "b":
        raise ConfigurationDiffers("b runs with another configuration: machine.cpus: 1 → 2", hint="use --restart")
    return Outcome.STARTED


def test_cli_up_and_down_json_list_each_vms_result_on_stdout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from vmrun.cli.main import main

    fleet = tmp_path / "fleet"
    fleet.mkdir()
    for name in ("a", "b"):
        (fleet / f"{name}.toml").write_text(f'name = "{name}"\n[boot]\nkernel = "/boot/vmlinuz"\n')
    (fleet / "c.toml").write_text('name = "c"\n[machine]\ncpus = 0\n')
    # Only a test can make up refuse without a running VM; the command around it is the real one.
    monkeypatch.setattr("vmrun.run.lifecycle.up", _up_by_name)
    assert main(["--run-dir", str(tmp_path / "run"), "up", "--json", str(fleet)]) == 2
    out = capsys.readouterr().out
    assert [(vm["name"], vm["spec"], vm["result"], vm["exit_code"]) for vm in json.loads(out)] == [
        (f"{fleet}/c.toml", f"{fleet}/c.toml", "invalid", 2), ("a", f"{fleet}/a.toml", "started", 0),
        ("b", f"{fleet}/b.toml", "refused", 2)]
    invalid, started, refused = json.loads(out)
    assert invalid["errors"] == [  # every problem, each a line as vmrun prints it
        f"{fleet}/c.toml: machine.cpus: must be at least 1, got 0",
        f"{fleet}/c.toml: boot: nothing to boot (hint: set boot.kernel (direct kernel boot) or boot.disk (a disk id))"]
    assert started["errors"] == [] and started["hint"] is None
    assert (refused["errors"], refused["hint"]) == (["b runs with another configuration: machine.cpus: 1 → 2"],
                                                    "use --restart")

    assert main(["--run-dir", str(tmp_path / "run"), "down", "--json", "a", "b"]) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"name": name, "spec": None, "result": "not running", "outcome": "not running", "exit_code": 0, "errors": [],
         "hint": None} for name in ("a", "b")]
