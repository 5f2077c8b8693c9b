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
  - O(state=migrated) is C(vmrun migrate) of each VM the specs name that runs on this host, to O(to): it drains
    the host, each guest moving live (no reboot). A VM that does not run here is left alone (V(not here)), so a
    second run changes nothing.
  - O(state=absent) is C(vmrun down) of the VMs the specs name. As for C(vmrun down), a spec only has to name
    its VM, it need not be valid; a spec that names none fails the task and nothing is stopped.
  - The task reports changed only when a VM was started, restarted or stopped.
  - Check mode starts, stops and moves nothing and predicts the real run, failures included. For
    O(state=migrated) it says which VMs would move where (those C(vmrun status --json) shows running here).
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
      - V(present) starts what does not run, as C(vmrun up); V(absent) stops the VMs, as C(vmrun down);
        V(migrated) moves those running here to O(to), as C(vmrun migrate).
    type: str
    choices: [present, absent, migrated]
    default: present
  to:
    version_added: "1.2.0"
    description:
      - The host to move the VMs to, V([USER@]HOST), reached with O(rsh); C(vmrun migrate --to). Required with
        O(state=migrated), refused otherwise.
    type: str
  rsh:
    version_added: "1.2.0"
    description:
      - The remote shell command that reaches O(to); C(vmrun migrate -e). vmrun's default is C(ssh).
    type: str
  remote_vmrun:
    version_added: "1.2.0"
    description:
      - The command line that runs vmrun on O(to); C(vmrun migrate --remote-vmrun). vmrun's default is C(vmrun).
    type: str
  copy_storage:
    version_added: "1.2.0"
    description:
      - Copy the writable disks to O(to) as well (C(vmrun migrate --copy-storage)); without it they must be on
        storage both hosts see at the same paths.
    type: bool
    default: false
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

- name: Drain this host before maintenance, every guest moving live to kvm2
  vmrun.fleet.vms:
    specs: /etc/vmrun/specs
    state: migrated
    to: root@kvm2.example.com

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
          V(stopped), V(not running), V(failed), V(interrupted) for O(state=absent);
          V(migrated), V(not here) (does not run on this host), V(failed) for O(state=migrated).
      type: str
      sample: started
    outcome:
      description:
        - The result as vmrun's summary line says it (V(would stop) in check mode with O(state=absent)); for
          O(state=migrated) where to and how it went (V(would migrate to kvm2) in check mode).
      type: str
      sample: stopped (ACPI powerdown)
    spec:
      description: The spec file the VM came from, as vmrun read it, or null.
      type: str
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

CHANGED = ("started", "restarted", "stopped", "migrated")
GOOD = ("started", "restarted", "up to date", "stopped", "not running", "migrated", "not here")


def vm(name, result, errors=(), hint=None, exit_code=0, outcome=None, spec=None):
    """One VM's entry, shaped as vmrun's `up --json` and `down --json` give it."""
    return {"name": name, "spec": spec, "result": result, "outcome": outcome or result, "exit_code": exit_code,
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
    (named by its path), with the errors `vmrun up` refuses it with (diff exits 2 then)."""
    return vmrun.json_or_fail((0, 2, 6), "diff", "--json", *specs(vmrun.module))


def drift_of(row):
    """One word per `vmrun diff --json` row: invalid, up to date, differs or not running. vmrun before 0.9
    said it as `status` until this collection's 1.2.0; a managed host may still run one."""
    if "status" in row:
        return row["status"]
    if row.get("errors"):
        return "invalid"
    return row["drift"] or "not running"


def predict_up(rows, restart):
    """What `vmrun up` would do to each VM, from what `vmrun diff` says of it."""
    predicted = []
    for row in rows:
        drift = drift_of(row)
        if drift == "invalid":
            predicted.append(vm(row["name"], "invalid", row["errors"], hint=row["hint"], exit_code=2,
                                outcome="invalid (exit 2)", spec=row["spec"]))
        elif drift == "up to date":
            predicted.append(vm(row["name"], "up to date", spec=row["spec"]))
        elif drift == "not running":
            predicted.append(vm(row["name"], "started", spec=row["spec"]))
        elif restart:
            predicted.append(vm(row["name"], "restarted", spec=row["spec"]))
        else:
            # vmrun up's own refusal, word for word.
            message = f"{row['name']} runs with another configuration: {'; '.join(row['differences'])}"
            predicted.append(vm(row["name"], "refused", [message], exit_code=2, spec=row["spec"],
                                hint=f"vmrun up --restart {row['spec']} applies it (a graceful down, then up)"))
    return predicted


def vm_text(name, status, lines=()):
    return f"{name}: {status}\n" + "".join(f"  {line}\n" for line in lines)


def up_diff(rows, vms):
    """Before: each VM as `vmrun diff` says it; after: up to date where up brings it there. Each spec up leaves
    out (an invalid one) below the diff, with vmrun's errors."""
    brought = set(entry["name"] for entry in vms if entry["result"] in GOOD)
    valid = [row for row in rows if drift_of(row) != "invalid"]
    before = "".join(vm_text(row["name"], drift_of(row), row["differences"]) for row in valid)
    after = "".join(vm_text(row["name"], "up to date") if row["name"] in brought
                    else vm_text(row["name"], drift_of(row), row["differences"]) for row in valid)
    diff = {"before": before, "after": after}
    left_out = [row for row in rows if drift_of(row) == "invalid"]
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


def migrate_options(module):
    """vmrun migrate's options from the task's, vmrun's defaults where the task gives none."""
    params = module.params
    options = ["--to", params["to"]]
    for option, param in (("-e", "rsh"), ("--remote-vmrun", "remote_vmrun")):
        if params[param] is not None:
            options += [option, params[param]]
    if params["timeout"] is not None:
        options += ["--timeout", f"{params['timeout']:g}"]
    return options + (["--copy-storage"] if params["copy_storage"] else [])


def migrate_one(vmrun, name):
    """`vmrun migrate --json` of one VM: its entry, with vmrun's figures or its errors."""
    to = vmrun.module.params["to"]
    rc, moved, errors, _ = vmrun.run("migrate", *migrate_options(vmrun.module), "--json", "--", name)
    if rc != 0 or not isinstance(moved, dict):
        return vm(name, "failed", errors or [f"vmrun migrate failed (exit {rc})"], exit_code=rc or 1,
                  outcome=f"failed (exit {rc})")
    return vm(name, "migrated", outcome=f"migrated to {to} (downtime {moved['downtime_ms']} ms, "
                                        f"{moved['bytes']} bytes sent)")


def migrated(module, vmrun):
    """Each VM the specs name (as down names them: a spec need only name its VM) that runs here moves to `to`;
    check mode says which would. A VM in any other state here is not this host's to move."""
    planned = vmrun.json_or_fail((0,), "down", "--dry-run", "--json", *specs(module))
    states = dict((entry["name"], entry["state"]) for entry in vmrun.status())
    to = module.params["to"]
    copying = " with its disks" if module.params["copy_storage"] else ""
    vms = []
    for name in (entry["name"] for entry in planned):
        state = states.get(name, "not running")
        if state != "running":
            vms.append(vm(name, "not here", outcome=f"{state} here"))
        elif module.check_mode:
            vms.append(vm(name, "migrated", outcome=f"would migrate to {to}{copying}"))
        else:
            vms.append(migrate_one(vmrun, name))
    moved = set(entry["name"] for entry in vms if entry["result"] == "migrated")
    before = "".join(vm_text(entry["name"], states.get(entry["name"], "not running") + " here") for entry in vms)
    after = "".join(vm_text(entry["name"], f"runs on {to}") if entry["name"] in moved
                    else vm_text(entry["name"], states.get(entry["name"], "not running") + " here") for entry in vms)
    return vms, {"before": before, "after": after}


def refusal(params):
    """An option that the state would silently ignore, said before vmrun runs."""
    if params["restart"] and params["state"] != "present":
        return (f"restart=true needs state=present (vmrun up --restart): state={params['state']} "
                + ("stops the VMs (vmrun down) and restarts none" if params["state"] == "absent"
                   else "moves the VMs (vmrun migrate) and restarts none"))
    if params["state"] == "migrated" and not params["to"]:
        return "state=migrated needs to: the host to move the VMs to"
    if params["state"] != "migrated" and (params["to"] or params["copy_storage"]):
        return f"to and copy_storage are for state=migrated, not state={params['state']}"
    return None


def main():
    module = AnsibleModule(
        argument_spec=dict(
            specs=dict(type="path", required=True),
            state=dict(type="str", choices=["present", "absent", "migrated"], default="present"),
            restart=dict(type="bool", default=False),
            to=dict(type="str"),
            rsh=dict(type="str"),
            remote_vmrun=dict(type="str"),
            copy_storage=dict(type="bool", default=False),
            timeout=dict(type="float"),
            **VMRUN_ARGUMENT_SPEC
        ),
        supports_check_mode=True,
    )
    refused = refusal(module.params)
    if refused:
        module.fail_json(msg=refused, vms=[])
    vmrun = Vmrun(module)
    vms, diff = {"present": present, "absent": absent, "migrated": migrated}[module.params["state"]](module, vmrun)
    result = {"changed": any(entry["result"] in CHANGED for entry in vms), "vms": vms}
    if module._diff and diff is not None:
        result["diff"] = dict(diff, before_header=module.params["specs"], after_header=module.params["specs"])
    if any(entry["result"] not in GOOD for entry in vms):
        module.fail_json(msg="; ".join(error_lines(vms)) or "vmrun failed", **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
