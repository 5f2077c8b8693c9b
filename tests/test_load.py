"""Loading: TOML -> Spec, every structural mistake at its path."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmrun.errors import SpecError
from vmrun.spec.load import dump_spec, load_spec, parse_spec
from vmrun.spec.model import Accel, Cache, SecurityModel, Vhost
from vmrun.units import MIB

from .common import GOOD_SPEC


def problems(text: str, tmp_path: Path) -> list[str]:
    path = tmp_path / "spec.toml"
    path.write_text(text)
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    return [str(problem) for problem in caught.value.problems]


def test_good_spec_loads_with_units_parsed_and_paths_resolved(tmp_path: Path) -> None:
    path = tmp_path / "spec.toml"
    path.write_text(GOOD_SPEC + '\n[agent]\ntimeout = "2m"\n')
    spec = load_spec(path)
    assert spec.machine.memory == 2048 * MIB
    assert spec.agent.timeout == 120.0
    assert spec.boot.kernel == tmp_path / "vmlinuz"
    assert spec.disks[0].path == tmp_path / "root.qcow2"
    assert spec.shares[0].path == Path("/srv/data")
    assert spec.vfio[0].host == "0000:01:00.0"
    assert spec.machine.accel is Accel.AUTO
    assert spec.nics[0].vhost is Vhost.AUTO
    assert spec.shares[0].security_model is SecurityModel.MAPPED_XATTR


def test_parent_relative_paths_are_normalized(tmp_path: Path) -> None:
    spec = parse_spec(
        {"name": "x", "disks": [{"id": "d", "path": "../images/d.raw"}]}, source="x", base=tmp_path / "specs"
    )
    assert spec.disks[0].path == tmp_path / "images" / "d.raw"


def test_relative_paths_follow_the_real_directory_of_the_spec_and_of_a_symlinked_spec(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The spec's directory as the file system has it: through a symlinked directory, and for a spec that is
    itself a symlink, its target's directory (spec_base resolves each directory once)."""
    (tmp_path / "real").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "real" / "spec.toml").write_text(GOOD_SPEC)
    (tmp_path / "linked-dir").symlink_to(tmp_path / "real")
    (tmp_path / "elsewhere" / "link.toml").symlink_to(tmp_path / "real" / "spec.toml")
    (tmp_path / "elsewhere" / "copy.toml").write_text(GOOD_SPEC)
    monkeypatch.chdir(tmp_path / "elsewhere")
    for path, directory in [
        (tmp_path / "linked-dir" / "spec.toml", tmp_path / "real"),
        (tmp_path / "elsewhere" / "link.toml", tmp_path / "real"),
        (Path("link.toml"), tmp_path / "real"),
        (Path("copy.toml"), tmp_path / "elsewhere"),
        (Path("../linked-dir/spec.toml"), tmp_path / "real"),
    ]:
        assert load_spec(path).disks[0].path == directory.resolve() / "root.qcow2", path


@pytest.mark.parametrize(
    ("memory", "mib"), [("512M", 512), ("8G", 8192), ("1T", 1024 * 1024), (2048, 2048), ("4GiB", 4096)]
)
def test_memory_units(tmp_path: Path, memory: object, mib: int) -> None:
    spec = parse_spec({"name": "x", "machine": {"memory": memory}}, source="x", base=tmp_path)
    assert spec.machine.memory == mib * MIB


def test_every_structural_mistake_is_reported_with_its_path(tmp_path: Path) -> None:
    text = """\
name = "db"
descripton = "typo"
[machine]
cpus = "4"
memory = "8X"
accel = "kvmm"
[[disks]]
id = "root"
formt = "qcow2"
[[nics]]
id = "n"
vhost = "maybe"
queues = true
[qemu]
extra_args = ["-m", 3]
[agent]
timeout = "soon"
"""
    assert problems(text, tmp_path) == [
        "machine.accel: must be one of auto, kvm, tcg, got 'kvmm'",
        "machine.cpus: expected an integer, got a string ('4')",
        "machine.memory: expected a size such as 512M or 8G (units K M G T), got '8X'",
        "disks[0].path: required key is missing",
        "disks[0].formt: unknown key (hint: did you mean 'format'?)",
        "nics[0].queues: expected an integer, got a boolean (True)",
        'nics[0].vhost: must be true, false or "auto", got a string (\'maybe\')',
        "agent.timeout: expected a duration such as 30s, 2m or 500ms, got 'soon'",
        "qemu.extra_args[1]: expected a string, got an integer (3)",
        "descripton: unknown key (hint: did you mean 'description'?)",
    ]


def test_enum_error_lists_the_choices(tmp_path: Path) -> None:
    text = 'name = "x"\n[[disks]]\nid = "a"\npath = "a"\n[[disks]]\nid = "b"\npath = "b"\nformat = "qcow"\n'
    assert problems(text, tmp_path) == ["disks[1].format: must be one of raw, qcow2, got 'qcow'"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('name = "x"\ndisks = {id = "a"}\n', "disks: expected an array, got a table"),
        ('name = "x"\nmachine = 4\n', "machine: expected a table, got an integer (4)"),
        ('name = "x"\n[[post_boot]]\nrun = "ls"\n', "post_boot[0].run: expected an array, got a string ('ls')"),
        ("[machine]\ncpus = 2\n", "name: required key is missing"),
        ('name = "x"\n[[shares]]\nid = "s"\npath = ""\ntag = "t"\n', "shares[0].path: path must not be empty"),
        ('name = "x"\n[kubevirt.disks.root]\npvc = 3\n',
         "kubevirt.disks.root.pvc: expected a string, got an integer (3)"),
        ('name = "x"\n[cloud_init]\nuser_data = "u"\nmeta_data = { "a\\u0007b" = "c" }\n',
         "cloud_init.meta_data['a\\x07b']: control character '\\x07' is not allowed"),
    ],
)
def test_wrong_shapes_are_named(tmp_path: Path, text: str, expected: str) -> None:
    assert problems(text, tmp_path) == [expected]


def test_unknown_key_far_from_any_known_one_lists_the_keys(tmp_path: Path) -> None:
    [message] = problems('name = "x"\n[agent]\nzzz = 1\n', tmp_path)
    assert message == "agent.zzz: unknown key (hint: known keys: enabled, timeout)"


def test_not_toml_and_missing_file_are_spec_errors(tmp_path: Path) -> None:
    assert problems('name = "x\n', tmp_path)[0].startswith("not valid TOML:")
    with pytest.raises(SpecError, match="cannot read spec"):
        load_spec(tmp_path / "absent.toml")


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('name = "x"\nname = "y"\n', "line 2 column 1"),  # a duplicate key
        ("a = " + "[" * 100_000 + "]" * 100_000 + "\n", "line 1"),  # nesting no spec has: refused, not a crash
        ('name = "x"\n[machine]\ncpus = 1e999\n', "line 3"),
    ],
)
def test_a_document_that_is_not_toml_is_refused_where_it_goes_wrong(tmp_path: Path, text: str, where: str) -> None:
    [message] = problems(text, tmp_path)
    assert message.startswith("not valid TOML:") and where in message and "\n" not in message


def test_dump_round_trips_through_load(tmp_path: Path) -> None:
    path = tmp_path / "spec.toml"
    path.write_text(GOOD_SPEC + '\n[[disks]]\nid = "log"\npath = "/l"\ncache = "none"\nsize = "1536M"\n')
    spec = load_spec(path)
    again = tmp_path / "again.toml"
    again.write_text(dump_spec(spec))
    assert load_spec(again) == spec
    assert 'size = "1536M"' in again.read_text()
    assert spec.disks[1].cache is Cache.NONE


def test_vhost_booleans(tmp_path: Path) -> None:
    spec = parse_spec(
        {"name": "x", "nics": [{"id": "a", "vhost": True}, {"id": "b", "vhost": False}]}, source="x", base=tmp_path
    )
    assert [nic.vhost for nic in spec.nics] == [Vhost.ON, Vhost.OFF]


@pytest.mark.parametrize(
    ("timeout", "expected"),
    [
        ("nan", "expected a finite duration, got nan"),
        ("inf", "expected a finite duration, got inf"),
        ("-inf", "expected a finite duration, got -inf"),
        ('"' + "9" * 400 + 's"', f"expected a finite duration, got '{'9' * 400}s'"),
    ],
)
def test_durations_must_be_finite(tmp_path: Path, timeout: str, expected: str) -> None:
    text = f'name = "x"\n[agent]\ntimeout = {timeout}\n[[post_boot]]\nrun = ["true"]\ntimeout = {timeout}\n'
    assert problems(text, tmp_path) == [f"agent.timeout: {expected}", f"post_boot[0].timeout: {expected}"]


def _broken_parser(value: object) -> int:
    raise TypeError("a bug in vmrun's size parser")


@pytest.mark.parametrize("document", [
    {"name": "x", "machine": {"memory": "8G"}},  # a section's key
    {"name": "x", "disks": [{"id": "a", "path": "a", "size": "1G"}]},  # an array item's key
], ids=["section", "array-item"])
def test_a_bug_while_structuring_is_raised_not_reported_as_the_users_mistake(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, document: dict[str, object]
) -> None:
    # Only a test can break vmrun's own parser; a user's document never reaches this.
    monkeypatch.setattr("vmrun.spec.load.parse_size", _broken_parser)
    with pytest.raises(TypeError, match="a bug in vmrun's size parser"):
        parse_spec(document, source="x", base=tmp_path)


def test_a_bug_while_structuring_exits_1_through_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from vmrun.cli.main import main

    spec = tmp_path / "x.toml"
    spec.write_text('name = "x"\n[boot]\nkernel = "k"\n[machine]\nmemory = "8G"\n')
    monkeypatch.setattr("vmrun.spec.load.parse_size", _broken_parser)
    assert main(["validate", str(spec)]) == 1
    assert capsys.readouterr().err == (
        "vmrun: internal error: TypeError: a bug in vmrun's size parser (rerun with --debug)\n")


def test_a_table_of_tables_is_still_checked_after_another_kind_of_table_was_structured() -> None:
    """cattrs' own mapping function, once made for a type, must not replace vmrun's (which refuses a non-table)."""
    from cattrs.errors import ClassValidationError

    from vmrun.spec.load import make_converter
    from vmrun.spec.model import CloudInit, Kubevirt

    converter = make_converter()
    converter.structure({"disks": {"root": {"pvc": "root"}}}, Kubevirt)
    converter.structure({"user_data": "u", "meta_data": {"a": "b"}}, CloudInit)
    with pytest.raises(ClassValidationError):
        converter.structure({"disks": False}, Kubevirt)
