# Copyright (c) vmrun contributors
# SPDX-License-Identifier: MIT


class ModuleDocFragment:
    """The options every vmrun.fleet module takes: which vmrun, and its run and state roots."""

    DOCUMENTATION = r"""
options:
  vmrun:
    description:
      - The vmrun executable on the managed host, a name looked up in E(PATH) or a path.
    type: str
    default: vmrun
  run_dir:
    description:
      - Where vmrun keeps per-VM run state (vmrun's C(--run-dir)); vmrun's default when unset
        (C(/run/vmrun) as root).
    type: path
  state_dir:
    description:
      - Where vmrun keeps state that outlives a run, such as UEFI variables (vmrun's C(--state-dir));
        vmrun's default when unset (C(/var/lib/vmrun) as root).
    type: path
requirements:
  - vmrun on the managed host
"""
