"""The completion scripts and the man page, generated from the parser: each shell takes its script, and
completes commands, options, spec files and the VM names `status --names` lists under the --run-dir given."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vmrun.cli.completion import completion_script, man_page
from vmrun.cli.parser import COMMANDS, build_parser

HOST_COMMANDS = ("iommu", "check")
# vmrun on PATH is this checkout's, as the scripts call it for VM names.
ENVIRONMENT = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
needs = {shell: pytest.mark.skipif(shutil.which(shell) is None, reason=f"{shell} not installed (setup-host)")
         for shell in ("bash", "zsh", "fish", "groff")}


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A run directory with one VM (web) in it, a spec, and a file that is no spec."""
    (tmp_path / "run" / "web").mkdir(parents=True)
    (tmp_path / "run" / "web" / "state.json").write_text("{}")
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "db.toml").touch()
    (tmp_path / "specs" / "notes.txt").touch()
    return tmp_path


def run_shell(shell: str, script: str, workdir: Path) -> str:
    result = subprocess.run([shell, "-c", script], capture_output=True, text=True, timeout=60, cwd=workdir,
                            env=ENVIRONMENT)
    assert result.returncode == 0 and not result.stderr, result.stderr
    return result.stdout


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_each_shell_accepts_its_script_and_it_names_every_command(shell: str, tmp_path: Path) -> None:
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} not installed (setup-host)")
    script = completion_script(shell, build_parser())
    (tmp_path / "vmrun").write_text(script)
    subprocess.run([shell, "-n", str(tmp_path / "vmrun")], check=True, timeout=60)
    for command in (*COMMANDS, *HOST_COMMANDS):
        assert re.search(rf"(?<![\w-]){command}(?![\w-])", script), command


# (the words typed, the cursor's word last) -> what bash offers
BASH_CASES = {
    ("",): "completion console cp diff down exec export host image init logs man migrate preflight render snapshot ssh "
           "ssh-config status up validate",
    ("--run-dir", "run", "ex"): "exec export",
    ("--run-dir", "run", "exec", ""): "web",
    ("--run-dir=run", "down", ""): "run specs web",  # VMs, specs and directories
    ("up", "specs/"): "specs/db.toml",
    ("up", "--"): "--fresh --help --jobs --json --restart --timeout",
    ("host", ""): "check iommu",
    ("host", "iommu", "--"): "--help --json",
    ("export", "--format", ""): "kubevirt libvirt systemd",
    ("--run-dir", "run", "cp", "specs/db.toml", "w"): "web:",
    ("--run-dir", "run", "cp", "web", ":", "/e"): "",  # a path in the guest: nothing to offer
    ("--run-dir", "run", "cp", "-r", "w"): "web:",
    ("exec", "web", "--", ""): "",  # the guest's command line
    ("--run-dir", "run", "ssh", ""): "web",
    ("--run-dir", "run", "migrate", ""): "web",
    ("init", ""): "",  # a new VM's name
    ("completion", ""): "bash fish zsh",
    ("snapshot", ""): "list restore rm save",
    ("--run-dir", "run", "snapshot", "restore", ""): "run specs web",  # a running VM, or a stopped one's spec
}


def offered(shell: str, workdir: Path, stand_ins: str, queries: list[str]) -> list[str]:
    """One line of what the shell offers per query, with its script sourced after the stand-ins."""
    (workdir / f"vmrun.{shell}").write_text(completion_script(shell, build_parser()))
    script = "\n".join([stand_ins, f"source ./vmrun.{shell}", *queries, "true"])  # a query's status is no failure
    return run_shell(shell, script, workdir).splitlines()


@needs["bash"]
def test_bash_completes_commands_options_specs_and_running_vm_names(workdir: Path) -> None:
    queries = [f"COMP_WORDS=(vmrun {' '.join(repr(word) for word in words)}); COMP_CWORD={len(words)}; _vmrun; "
               "printf '%s\\n' \"$(printf '%s\\n' \"${COMPREPLY[@]}\" | sort | xargs)\"" for words in BASH_CASES]
    # compopt works only while bash itself completes
    assert dict(zip(BASH_CASES, offered("bash", workdir, "compopt() { :; }", queries), strict=True)) == BASH_CASES


@needs["fish"]
def test_fish_completes_commands_options_specs_and_running_vm_names(workdir: Path) -> None:
    cases = {
        "vmrun --run-dir run exec ": "web",
        "vmrun up specs/": "specs/db.toml",
        "vmrun host iommu --": "--help --json",
        "vmrun export --format ": "kubevirt libvirt systemd",
        "vmrun --run-dir=run cp w": "web:",
    }
    queries = [f"complete -C '{line}' | string replace -r '\\t.*' '' | sort | string join ' '" for line in cases]
    assert dict(zip(cases, offered("fish", workdir, "", queries), strict=True)) == cases


@needs["zsh"]
def test_zsh_asks_for_what_the_word_at_the_cursor_may_be(workdir: Path) -> None:
    """zsh completes only in an interactive shell: here its helpers are stand-ins that say what they were asked."""
    cases = {
        "--run-dir run exec ''": "compadd -- web",
        "up s": "_files -g *.toml",
        "--run-dir run down ''": "compadd -- web|_files -g *.toml",
        "host ''": "compadd -- iommu check",
        "--run-dir run cp w": "compadd -S : -- web|_files",
        "init -o ''": "_files",
    }
    stand_ins = 'compdef() { :; }; compadd() { print -rn -- "compadd $*|"; }; _files() { print -rn -- "_files $*|"; }'
    queries = [f"words=(vmrun {words}); CURRENT=${{#words}}; _vmrun; print" for words in cases]
    lines = [line.rstrip("| ") for line in offered("zsh", workdir, stand_ins, queries)]
    assert dict(zip(cases, lines, strict=True)) == cases


def test_status_names_lists_the_vms_under_the_run_dir_without_asking_them(workdir: Path) -> None:
    def names(run_dir: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "vmrun", "--run-dir", str(run_dir), "status", "--names"],
                              capture_output=True, text=True, timeout=60)

    assert names(workdir / "run").stdout == "web\n"
    assert (names(workdir / "nothing here").returncode, names(workdir / "nothing here").stdout) == (0, "")


def test_the_man_page_has_every_command_and_option() -> None:
    page = man_page(build_parser())
    for command in COMMANDS:
        if command not in ("host", "image", "snapshot"):
            roff = command.replace("-", "\\-")  # roff writes a hyphen as \-
            assert f".SS {roff}\n" in page, command
    assert ".SS host iommu\n" in page and ".SS host check\n" in page
    assert all(f".SS snapshot {what}\n" in page for what in ("save", "restore", "rm", "list"))
    assert all(f".SS image {what}\n" in page for what in ("pull", "list", "rm"))
    assert "\\-\\-agent\\-timeout" not in page  # hidden from --help, hidden here
    for option in ("\\-\\-run\\-dir", "\\-\\-restart", "\\-\\-names", "\\-o, \\-\\-output"):
        assert option in page, option


@needs["groff"]
def test_groff_renders_the_man_page_without_a_warning() -> None:
    rendered = subprocess.run(["groff", "-man", "-Tutf8", "-ww"], input=man_page(build_parser()), capture_output=True,
                              text=True, check=True, timeout=60)
    assert rendered.stderr == ""
    assert "vmrun cp [-h] [-r] [--json] SRC|NAME:SRC NAME:DST|DST" in rendered.stdout


@needs["bash"]
def test_bash_offers_a_spec_file_with_white_space_or_shell_words_in_its_name_as_one_word(tmp_path: Path) -> None:
    odd = ["my spec.toml", "$(touch pwned).toml", "*.toml"]
    for name in odd:
        (tmp_path / name).touch()
    query = "COMP_WORDS=(vmrun up ''); COMP_CWORD=2; _vmrun; printf '%s\\n' \"${COMPREPLY[@]}\" | sort"
    assert sorted(offered("bash", tmp_path, "compopt() { :; }", [query])) == sorted(odd)
    assert not (tmp_path / "pwned").exists()
