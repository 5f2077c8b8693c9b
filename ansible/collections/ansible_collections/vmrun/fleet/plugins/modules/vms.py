#!/usr/bin/python
# Copyright (c) vmrun contributors
# SPDX-License-Identifier: MIT

DOCUMENTATION = r"""
---
module: vms
short_description: Bring the VMs of vmrun spec files to a state, as C(vmrun up) and C(vmrun down) do
description:
  - Runs the C(vmrun) executable on the managed host against a directory of vmrun specs (its C(*.toml) files)
    or one spec file.
  - O(state=present) is C(vmrun up). VMs that do not run are started, VMs running with their spec's
    configuration are left alone, and a VM running with another configuration fails the task, as
    C(vmrun up) refuses it, unless O(restart=true).
  - O(state=absent) is C(vmrun down) of the VMs the specs name.
  - The task reports changed only when a VM was started, restarted or stopped.
  - Check mode and C(--diff) come from C(vmrun diff --json) (and C(vmrun status --json) for O(state=absent));
    check mode starts and stops nothing.
  - Errors are vmrun's own one-line messages.
version_added: "1.0.0"
author:
  - vmrun maintainers (!UNKNOWN)  # no GitHub handle to name
options:
  specs:
    description:
      - A directory of vmrun specs (its C(*.toml) files) or one spec file, on the managed host.
    type: path
    required: true
  state:
    description:
      - V(present) starts what does not run, as C(vmrun up); V(absent) stops the VMs, as C(vmrun down).
    type: str
    choices: [present, absent]
    default: present
  restart:
    description:
      - Restart a VM that runs with another configuration than its spec's (a graceful down, then up),
        as C(vmrun up --restart). Without it such a VM fails the task and keeps running.
    type: bool
    default: false
  timeout:
    description:
      - Seconds a guest gets to power down (when restarted, or stopped by O(state=absent)) before vmrun
        quits and then kills its qemu; vmrun's C(--timeout). vmrun's default is 30.
    type: float
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
attributes:
  check_mode:
    description: Starts and stops nothing; what would become of each VM comes from C(vmrun diff --json).
    support: full
  diff_mode:
    description: Each VM as C(vmrun diff) says it before, and what it is (or would be) after.
    support: full
requirements:
  - vmrun on the managed host
notes:
  - The diff lists each VM as C(vmrun diff) says it (up to date, not running, or what differs in spec terms)
    before, and what it would be after.
"""

EXAMPLES = r"""
- name: Copy this host's spec directory (in check mode too, so that --check --diff previews it)
  ansible.builtin.copy:
    src: "fleet/{{ inventory_hostname }}/"
    dest: /etc/vmrun/specs/
    mode: "0644"
  check_mode: false

- name: Start what does not run, leave what matches alone
  vmrun.fleet.vms:
    specs: /etc/vmrun/specs

- name: Apply changed specs by restarting those VMs
  vmrun.fleet.vms:
    specs: /etc/vmrun/specs
    restart: true

- name: Stop them all
  vmrun.fleet.vms:
    specs: /etc/vmrun/specs
    state: absent
    timeout: 60
"""

RETURN = r"""
vms:
  description:
    - What became of each VM (in check mode, what would), in the order of the spec files.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: The VM's name; the spec's path for an invalid spec.
      type: str
      sample: web
    result:
      description:
        - V(started), V(up to date), V(restarted), V(refused) (runs with another configuration),
          V(invalid), V(failed), V(interrupted) for O(state=present);
          V(stopped), V(not running), V(failed), V(interrupted) for O(state=absent).
      type: str
      sample: started
    outcome:
      description: The result as vmrun's summary line says it.
      type: str
      sample: stopped (ACPI powerdown)
    exit_code:
      description: vmrun's exit code for this VM.
      type: int
      sample: 0
    errors:
      description: vmrun's one-line error messages for this VM.
      type: list
      elements: str
      sample: ["web runs with another configuration: machine.memory: 64M → 96M"]
    hint:
      description: vmrun's hint for the error, or null.
      type: str
  sample:
    - {name: db, result: up to date, outcome: up to date, exit_code: 0, errors: [], hint: null}
    - {name: web, result: started, outcome: started, exit_code: 0, errors: [], hint: null}
"""

import json  # noqa: E402 - after the documentation, as Ansible modules are laid out

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

CHANGED = ("started", "restarted", "stopped")
GOOD = ("started", "restarted", "up to date", "stopped", "not running")


def vm(name, result, errors=(), hint=None, exit_code=0):
    """One VM's entry, shaped as vmrun's `up --json` and `down --json` give it."""
    return {"name": name, "result": result, "outcome": result, "exit_code": exit_code, "errors": list(errors),
            "hint": hint}


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

    def specs(self):
        """The specs argument, never taken for an option (a directory named --all)."""
        return ["--", self.module.params["specs"]]

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
        """vmrun's JSON output; the task fails with vmrun's errors when it gives none, or exits otherwise
        than ok_codes (None: whatever it exits with, its JSON tells each VM's fate)."""
        rc, parsed, errors, err = self.run(*args)
        if (ok_codes is not None and rc not in ok_codes) or parsed is None:
            self.module.fail_json(msg="; ".join(errors) or f"vmrun {args[0]} failed (exit {rc})", rc=rc,
                                  stderr=err, vms=[])
        return parsed


def error_lines(vms):
    """Each failed VM's errors as one line each, named by the VM unless vmrun's message names it already."""
    return [line if line.startswith(entry["name"]) else f"{entry['name']}: {line}"
            for entry in vms if entry["result"] not in GOOD for line in entry["errors"]]


def specs_now(vmrun, *, invalid_ok=False):
    """`vmrun diff --json`: each VM of the specs, up to date, not running or what differs. An invalid spec
    fails the task with vmrun's errors unless invalid_ok (then it is left out, for `up` to report)."""
    return vmrun.json_or_fail((0, 2, 6) if invalid_ok else (0, 6), "diff", "--json", *vmrun.specs())


def predict_up(rows, restart):
    """What `vmrun up` would do to each VM, from what `vmrun diff` says of it."""
    predicted = []
    for row in rows:
        if row["status"] == "up to date":
            predicted.append(vm(row["name"], "up to date"))
        elif row["status"] == "not running":
            predicted.append(vm(row["name"], "started"))
        elif restart:
            predicted.append(vm(row["name"], "restarted"))
        else:
            # vmrun up's own refusal, word for word.
            message = f"{row['name']} runs with another configuration: {'; '.join(row['differences'])}"
            predicted.append(vm(row["name"], "refused", [message], exit_code=2,
                                hint=f"vmrun up --restart {row['spec']} applies it (a graceful down, then up)"))
    return predicted


def vm_text(name, status, lines=()):
    return f"{name}: {status}\n" + "".join(f"  {line}\n" for line in lines)


def up_diff(rows, vms):
    """Before: each VM as `vmrun diff` says it; after: up to date where up brings it there."""
    brought = set(entry["name"] for entry in vms if entry["result"] in GOOD)
    before = "".join(vm_text(row["name"], row["status"], row["differences"]) for row in rows)
    after = "".join(vm_text(row["name"], "up to date") if row["name"] in brought
                    else vm_text(row["name"], row["status"], row["differences"]) for row in rows)
    return {"before": before, "after": after}


def present(module, vmrun):
    rows = specs_now(vmrun, invalid_ok=not module.check_mode) if module.check_mode or module._diff else []
    if module.check_mode:
        vms = predict_up(rows, module.params["restart"])
    else:
        args = ["up", "--json"] + (["--restart"] if module.params["restart"] else [])
        vms = apply(vmrun, args)
    return vms, up_diff(rows, vms)


def apply(vmrun, args):
    """`vmrun up` or `down` with --json (and --timeout): each VM's entry as vmrun gives it."""
    timeout = vmrun.module.params["timeout"]
    args = args + (["--timeout", f"{timeout:g}"] if timeout is not None else []) + vmrun.specs()
    return vmrun.json_or_fail(None, *args)


def running_now(vmrun):
    """`vmrun status --json`: each VM with a run directory, by name, and its state."""
    return dict((entry["name"], entry["state"]) for entry in vmrun.json_or_fail((0,), "status", "--json"))


def absent(module, vmrun):
    if not (module.check_mode or module._diff):
        return apply(vmrun, ["down", "--json"]), None
    names = [row["name"] for row in specs_now(vmrun, invalid_ok=not module.check_mode)]
    states = running_now(vmrun)
    if module.check_mode:
        vms = [vm(name, "stopped" if name in states else "not running") for name in names]
    else:
        vms = apply(vmrun, ["down", "--json"])
    stopped = set(entry["name"] for entry in vms if entry["result"] in GOOD)
    before = "".join(vm_text(name, states.get(name, "not running")) for name in names)
    after = "".join(vm_text(name, "not running" if name in stopped else states.get(name, "not running"))
                    for name in names)
    return vms, {"before": before, "after": after}


def main():
    module = AnsibleModule(
        argument_spec=dict(
            specs=dict(type="path", required=True),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            restart=dict(type="bool", default=False),
            timeout=dict(type="float"),
            vmrun=dict(type="str", default="vmrun"),
            run_dir=dict(type="path"),
            state_dir=dict(type="path"),
        ),
        supports_check_mode=True,
    )
    vmrun = Vmrun(module)
    vms, diff = (present if module.params["state"] == "present" else absent)(module, vmrun)
    result = {"changed": any(entry["result"] in CHANGED for entry in vms), "vms": vms}
    if module._diff and diff is not None:
        result["diff"] = dict(diff, before_header=module.params["specs"], after_header=module.params["specs"])
    if any(entry["result"] not in GOOD for entry in vms):
        module.fail_json(msg="; ".join(error_lines(vms)) or "vmrun failed", **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
