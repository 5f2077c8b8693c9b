# Copyright (c) vmrun contributors
# SPDX-License-Identifier: MIT
"""What vmrun.fleet's modules share: the vmrun executable on the managed host, run with the task's run and state
roots, its --json output read and its one-line errors kept."""

import json

# The options every module of the collection takes (documented once, in the vmrun.fleet.vmrun doc fragment).
VMRUN_ARGUMENT_SPEC = dict(
    vmrun=dict(type="str", default="vmrun"),
    run_dir=dict(type="path"),
    state_dir=dict(type="path"),
)


class Vmrun:
    """The vmrun executable on this host, with the task's run and state roots."""

    def __init__(self, module):
        self.module = module
        executable = module.params["vmrun"]
        path = executable if "/" in executable else module.get_bin_path(executable, required=True)
        self.base = [path]
        for option, param in (("--run-dir", "run_dir"), ("--state-dir", "state_dir")):
            if module.params[param]:
                self.base += [option, module.params[param]]

    def run(self, *args):
        """vmrun's exit code, its JSON output (None when it printed none) and its error lines."""
        argv = self.base + list(args)
        rc, out, err = self.module.run_command(argv, expand_user_and_vars=False)
        try:
            parsed = json.loads(out)
        except ValueError:
            parsed = None
        errors = [line[len("vmrun: error: "):] for line in err.splitlines() if line.startswith("vmrun: error: ")]
        return rc, parsed, errors, err

    def json_or_fail(self, ok_codes, *args):
        """vmrun's JSON output; the task fails with vmrun's errors (and no VMs) when it gives none, or exits
        otherwise than ok_codes (None: whatever it exits with, its JSON tells each VM's fate)."""
        rc, parsed, errors, err = self.run(*args)
        if (ok_codes is not None and rc not in ok_codes) or parsed is None:
            self.module.fail_json(msg="; ".join(errors) or f"vmrun {args[0]} failed (exit {rc})", rc=rc,
                                  stderr=err, vms=[])
        return parsed

    def status(self):
        """`vmrun status --json`: each VM with a run directory under the run root, as vmrun says it."""
        return self.json_or_fail((0,), "status", "--json")
