#!/usr/bin/env python3
"""vmrun's own cost for one VM: `vmrun up` of an agent-less VM against raw qemu with the same argv.

vmrun:  `vmrun up SPEC` from its start to its exit: Python, imports, validation, host facts, the
        preflight plan and its tap, qemu's launch, and QMP's answer that the guest runs.
raw:    the argv `vmrun render --json` prints, on a tap made beforehand, from qemu's start to
        query-status answered over QMP (greeting, capabilities, query-status: what vmrun asks).
Interleaved rounds in one run; the overhead is the median of vmrun's times minus the median of raw's, in ms
and as a ratio to the import floor `python -c 'import attrs, cattrs'` timed in the same rounds (target
<= 1.5x). qemu is launched through `sh`, whose import brings asyncio: where 1.5x cannot be met, vmrun's own
share (the overhead less the interpreter, the attrs/cattrs and asyncio imports) must be <= 0.3x the floor.
vmrun's phases come from the moments its progress lines arrive; the time before the plan is split with
`python -c pass` and `vmrun validate SPEC`, timed in each round too, as are the imports of asyncio and sh.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boot
from boot import REPO, VMRUN, qmp, vmrun

TARGET_RATIO = 1.5
OWN_SHARE_RATIO = 0.3
FLOOR = "import attrs, cattrs"
NAME = "benchov"
# The progress line that closes each phase, in order; a phase's time runs from the line before.
PHASES = (
    ("start to the plan", "accel "),
    ("host changes (tap)", "preflight: "),
    ("launch (qemu -daemonize)", "launching "),
    ("launch (qemu -daemonize)", "qemu pid "),
    ("QMP (connect, query-status)", f"{NAME} is up"),
)


def write_spec(directory: Path) -> Path:
    spec = directory / f"{NAME}.toml"
    spec.write_text(f"""\
name = "{NAME}"
[machine]
cpus = 1
memory = "256M"
[boot]
kernel = "{REPO / 'images' / 'tiny' / 'vmlinuz'}"
initrd = "{REPO / 'images' / 'tiny' / 'initrd.gz'}"
append = "console=ttyS0 quiet"
[[nics]]
id = "net0"
[agent]
enabled = false
""")
    return spec


def time_raw(run_dir: Path, argv: list[str]) -> float:
    return boot.time_raw(run_dir, argv, NAME, ready=lambda vm_dir: qmp(vm_dir / "qmp.sock", "query-status"))


def vmrun_arguments(run_dir: Path) -> list[str]:
    return ["--run-dir", str(run_dir), "--state-dir", str(run_dir.with_name(f"{run_dir.name}-state"))]


def time_vmrun(run_dir: Path, spec: Path) -> tuple[float, dict[str, float]]:
    """The whole `vmrun up`, and each phase's share of it from when its closing progress line arrived."""
    started = time.perf_counter()
    process = subprocess.Popen([*VMRUN, *vmrun_arguments(run_dir), "up", str(spec)], stderr=subprocess.PIPE,
                               text=True, cwd=REPO)
    assert process.stderr is not None
    arrivals: list[tuple[float, str]] = [(time.perf_counter(), line) for line in process.stderr]
    if process.wait():
        raise SystemExit(f"vmrun up failed: {''.join(line for _, line in arrivals)}")
    elapsed = time.perf_counter() - started
    phases: dict[str, float] = {}
    last = started
    for phase, prefix in PHASES:
        moment = next((at for at, line in arrivals if line.startswith(f"vmrun: {prefix}")), last)
        phases[phase] = phases.get(phase, 0.0) + moment - last
        last = moment
    phases["exit"] = time.perf_counter() - last
    vmrun(run_dir, "down", NAME, "--force")
    return elapsed, phases


def wall_time(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=11)
    args = parser.parse_args()
    samples: dict[str, list[float]] = {}

    def sample(what: str, seconds: float) -> None:
        samples.setdefault(what, []).append(seconds)

    with tempfile.TemporaryDirectory(prefix="vmrun-bench-") as temporary:
        run_dir = Path(temporary) / "run"
        spec = write_spec(Path(temporary))
        argv = json.loads(vmrun(run_dir, "render", str(spec), "--json"))
        time_vmrun(run_dir, spec)  # the first start may create the qemu user
        time_raw(run_dir, argv)
        for _ in range(args.rounds):
            sample("raw", time_raw(run_dir, argv))
            elapsed, phases = time_vmrun(run_dir, spec)
            sample("vmrun", elapsed)
            for phase, seconds in phases.items():
                sample(phase, seconds)
            sample("interpreter", wall_time([sys.executable, "-c", "pass"]))
            sample("floor", wall_time([sys.executable, "-c", FLOOR]))
            sample("asyncio", wall_time([sys.executable, "-c", "import asyncio"]))
            sample("sh", wall_time([sys.executable, "-c", "import sh"]))
            sample("validate", wall_time([*VMRUN, "validate", str(spec)]))
    median = {what: statistics.median(seconds) * 1000 for what, seconds in samples.items()}
    overhead = median["vmrun"] - median["raw"]
    paired = statistics.median(v - r for v, r in zip(samples["vmrun"], samples["raw"], strict=True)) * 1000
    accel = argv[argv.index("-accel") + 1]
    print(f"one agent-less VM (1 vCPU, one tap), accel {accel}, {args.rounds} interleaved rounds, medians:")
    print(f"  vmrun up (start -> exit)            {median['vmrun']:6.0f} ms")
    print(f"  raw qemu (start -> query-status)    {median['raw']:6.0f} ms")
    floor, interpreter = median["floor"], median["interpreter"]
    ratio = overhead / floor
    print(f"  import floor (python -c '{FLOOR}')  {floor:6.0f} ms")
    print(f"  vmrun's overhead {overhead:.0f} ms (paired rounds: {paired:.0f} ms) = {ratio:.2f}x the floor, "
          f"target <= {TARGET_RATIO}x: {'met' if ratio <= TARGET_RATIO else 'NOT met'}")
    asyncio_import, sh_import = median["asyncio"] - interpreter, median["sh"] - interpreter
    own = overhead - floor - asyncio_import
    print(f"  sh's import {sh_import:.0f} ms (asyncio {asyncio_import:.0f} ms of it, which qemu.qmp needs too)")
    print(f"  vmrun's own share (overhead - floor - asyncio's import) {own:.0f} ms = {own / floor:.2f}x the floor, "
          f"target <= {OWN_SHARE_RATIO}x: {'met' if own <= OWN_SHARE_RATIO * floor else 'NOT met'}")
    print("  vmrun up's phases:")
    validate = median["validate"] - interpreter
    print(f"    {'interpreter start (python -c pass)':<40}{interpreter:6.0f} ms")
    print(f"    {'imports for validate, validate':<40}{validate:6.0f} ms   (vmrun validate - python -c pass)")
    print(f"    {'imports for up, host facts, plan':<40}{median[PHASES[0][0]] - interpreter - validate:6.0f} ms")
    for phase in dict.fromkeys([phase for phase, _ in PHASES[1:]] + ["exit"]):
        print(f"    {phase:<40}{median[phase]:6.0f} ms")


if __name__ == "__main__":
    main()
