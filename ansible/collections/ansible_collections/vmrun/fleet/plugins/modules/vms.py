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
  - O(state=absent) is C(vmrun down) of the VMs the specs name. As for C(vmrun down), a spec only has to name
    its VM, it need not be valid; a spec that names none fails the task and nothing is stopped.
  - The task reports changed only when a VM was started, restarted or stopped.
  - Check mode starts and stops nothing and predicts the real run, failures included. For O(state=present) it
    comes from C(vmrun diff --json), which also gives each invalid spec and the errors C(vmrun up) refuses it
    with; for O(state=absent), from C(vmrun down --dry-run --json), which names the VMs as C(vmrun down) does,
    and C(vmrun status --json).
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
      - Only with O(state=present). O(restart=true) with O(state=absent) fails the task before vmrun runs, since
        C(vmrun down) stops VMs and restarts none (the option would otherwise be silently ignored).
    type: bool
    default: false
  timeout:
    description:
      - Seconds a guest gets to power down (when restarted, or stopped by O(state=absent)) before vmrun
        quits and then kills its qemu; vmrun's C(--timeout). vmrun's default is 30.
    type: float
extends_documentation_fragment:
  - vmrun.fleet.vmrun
attributes:
  check_mode:
    description:
      - Starts and stops nothing; what would become of each VM comes from C(vmrun diff --json)
        (O(state=present)) or C(vmrun down --dry-run --json) (O(state=absent)).
    support: full
  diff_mode:
    description:
      - Each VM as vmrun says it before, and what it is (or would be) after; and each spec left out, and why.
    support: full
notes:
  - For O(state=present) the diff lists each VM as C(vmrun diff) says it (up to date, not running, or what
    differs in spec terms) before, and what it would be after; each invalid spec, which C(vmrun up) leaves out,
    is listed below the diff with vmrun's errors.
  - For O(state=absent) the diff lists each VM that C(vmrun down) stops or finds not running, its state as
    C(vmrun status) says it before, and after.
seealso:
  - module: vmrun.fleet.vms_info
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
          V(invalid) (the spec's path as the name, its errors in RV(vms[].errors)), V(failed), V(interrupted)
          for O(state=present);
          V(stopped), V(not running), V(failed), V(interrupted) for O(state=absent).
      type: str
      sample: started
    outcome:
      description: The result as vmrun's summary line says it (V(would stop) in check mode with O(state=absent)).
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

from ansible.module_utils.basic import AnsibleModule  # noqa: E402 - after the documentation, as modules are laid out
from ansible_collections.vmrun.fleet.plugins.module_utils.vmrun import VMRUN_ARGUMENT_SPEC, Vmrun  # noqa: E402

CHANGED = ("started", "restarted", "stopped")
GOOD = ("started", "restarted", "up to date", "stopped", "not running")


def vm(name, result, errors=(), hint=None, exit_code=0, outcome=None):
    """One VM's entry, shaped as vmrun's `up --json` and `down --json` give it."""
    return {"name": name, "result": result, "outcome": outcome or result, "exit_code": exit_code,
            "errors": list(errors), "hint": hint}


def specs(module):
    """The specs argument, never taken for an option (a directory named --all)."""
    return ["--", module.params["specs"]]


def error_lines(vms):
    """Each failed VM's errors as one line each, named by the VM unless vmrun's message names it already."""
    return [line if line.startswith(entry["name"]) else f"{entry['name']}: {line}"
            for entry in vms if entry["result"] not in GOOD for line in entry["errors"]]


def specs_now(vmrun):
    """`vmrun diff --json`: each VM of the specs, up to date, not running or what differs; and each invalid spec
    (status invalid, named by its path), with the errors `vmrun up` refuses it with (diff exits 2 then)."""
    return vmrun.json_or_fail((0, 2, 6), "diff", "--json", *specs(vmrun.module))


def predict_up(rows, restart):
    """What `vmrun up` would do to each VM, from what `vmrun diff` says of it."""
    predicted = []
    for row in rows:
        if row["status"] == "invalid":
            predicted.append(vm(row["name"], "invalid", row["errors"], hint=row["hint"], exit_code=2,
                                outcome="invalid (exit 2)"))
        elif row["status"] == "up to date":
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
    """Before: each VM as `vmrun diff` says it; after: up to date where up brings it there. Each spec up leaves
    out (an invalid one) below the diff, with vmrun's errors."""
    brought = set(entry["name"] for entry in vms if entry["result"] in GOOD)
    valid = [row for row in rows if row["status"] != "invalid"]
    before = "".join(vm_text(row["name"], row["status"], row["differences"]) for row in valid)
    after = "".join(vm_text(row["name"], "up to date") if row["name"] in brought
                    else vm_text(row["name"], row["status"], row["differences"]) for row in valid)
    diff = {"before": before, "after": after}
    left_out = [row for row in rows if row["status"] == "invalid"]
    if left_out:
        diff["prepared"] = "left out by vmrun up:\n" + "".join(
            vm_text(row["name"], "invalid spec", row["errors"]) for row in left_out)
    return diff


def present(module, vmrun):
    rows = specs_now(vmrun) if module.check_mode or module._diff else []
    if module.check_mode:
        vms = predict_up(rows, module.params["restart"])
    else:
        vms = apply(vmrun, ["up", "--json"] + (["--restart"] if module.params["restart"] else []))
    return vms, up_diff(rows, vms)


def apply(vmrun, args):
    """`vmrun up` or `down` with --json (and --timeout): each VM's entry as vmrun gives it."""
    timeout = vmrun.module.params["timeout"]
    args = args + (["--timeout", f"{timeout:g}"] if timeout is not None else []) + specs(vmrun.module)
    return vmrun.json_or_fail(None, *args)


def absent(module, vmrun):
    if not (module.check_mode or module._diff):
        return apply(vmrun, ["down", "--json"]), None
    # The VMs down acts on, named as down names them (a spec need not be valid, only name its VM); a spec that
    # names none fails the task here as it fails down.
    planned = vmrun.json_or_fail((0,), "down", "--dry-run", "--json", *specs(module))
    states = dict((entry["name"], entry["state"]) for entry in vmrun.status())
    vms = planned if module.check_mode else apply(vmrun, ["down", "--json"])
    names = [entry["name"] for entry in planned]
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
            **VMRUN_ARGUMENT_SPEC
        ),
        supports_check_mode=True,
    )
    if module.params["state"] == "absent" and module.params["restart"]:
        module.fail_json(msg="restart=true needs state=present (vmrun up --restart): state=absent stops the VMs "
                             "(vmrun down) and restarts none", vms=[])
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
