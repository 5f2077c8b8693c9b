#!/usr/bin/python
# Copyright (c) vmrun contributors
# SPDX-License-Identifier: MIT

DOCUMENTATION = r"""
---
module: vms_info
short_description: What vmrun runs on a host, as C(vmrun status --json) says it
description:
  - Runs C(vmrun status --json) on the managed host and returns each VM under vmrun's run directory (one
    that runs, or that vmrun left a run directory for), with its state, qemu's pid, the accelerator, its run
    directory, uptime, its guest's addresses, what the host no longer holds for it and its port forwards.
  - Reads vmrun's own state and changes nothing; the task is never changed.
version_added: "1.1.0"
author:
  - vmrun maintainers (!UNKNOWN)  # no GitHub handle to name
options:
  names:
    description:
      - Only these VMs, in vmrun's order; a name vmrun does not know is left out of RV(vms) (and listed in
        RV(missing)). All VMs when unset.
    type: list
    elements: str
extends_documentation_fragment:
  - vmrun.fleet.vmrun
attributes:
  check_mode:
    description: Reads only, so check mode runs it as a real run does.
    support: full
  diff_mode:
    description: Returns no diff.
    support: none
seealso:
  - module: vmrun.fleet.vms
"""

EXAMPLES = r"""
- name: What runs on each host
  vmrun.fleet.vms_info:
  register: running

- name: Each host's running VMs and their qemu pids
  ansible.builtin.debug:
    msg: "{{ running.vms | selectattr('state', 'equalto', 'running') | items2dict(key_name='name', value_name='pid') }}"

- name: Where the database VM runs
  vmrun.fleet.vms_info:
    names: [db]
    run_dir: /run/vmrun
  register: db
"""

RETURN = r"""
vms:
  description:
    - Each VM under vmrun's run directory, as C(vmrun status --json) gives it (its keys as vmrun's contract
      names them; vmrun may add more).
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: The VM's name.
      type: str
      sample: web
    state:
      description:
        - V(running), V(stopped), V(dead), V(prepared), V(damaged) (its state file unreadable), V(migrated) (its
          guest left this host, its qemu paused for good) or V(incoming) (a migration's destination still waiting).
      type: str
      sample: running
    pid:
      description: qemu's pid, or null.
      type: int
      sample: 4242
    accel:
      description: V(kvm), V(tcg), or what vmrun says when it cannot tell.
      type: str
      sample: kvm
    run_dir:
      description: The VM's run directory on the managed host.
      type: str
      sample: /run/vmrun/web
    uptime:
      description: Seconds since qemu started, or null.
      type: float
      sample: 3600.5
    addresses:
      description: The guest's IP addresses per interface, as the guest agent reports them.
      type: dict
      sample: {eth0: [192.0.2.10]}
    host_drift:
      description: What the host no longer holds for a running VM (a tap, a bridge attachment), one line each.
      type: list
      elements: str
      sample: []
    forwards:
      description: A user-mode NIC's port forwards.
      type: list
      elements: str
      sample: []
  sample:
    - {name: web, state: running, pid: 4242, accel: kvm, run_dir: /run/vmrun/web, uptime: 3600.5, agent: null,
       addresses: {}, host_drift: [], forwards: []}
missing:
  description: The names in O(names) that vmrun does not know, in the order given.
  returned: always
  type: list
  elements: str
  sample: []
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402 - after the documentation, as modules are laid out
from ansible_collections.vmrun.fleet.plugins.module_utils.vmrun import VMRUN_ARGUMENT_SPEC, Vmrun  # noqa: E402


def main():
    module = AnsibleModule(
        argument_spec=dict(names=dict(type="list", elements="str"), **VMRUN_ARGUMENT_SPEC),
        supports_check_mode=True,
    )
    vms = Vmrun(module).status()
    wanted = module.params["names"]
    if wanted is not None:
        known = set(entry["name"] for entry in vms)
        module.exit_json(changed=False, vms=[entry for entry in vms if entry["name"] in wanted],
                         missing=[name for name in wanted if name not in known])
    module.exit_json(changed=False, vms=vms, missing=[])


if __name__ == "__main__":
    main()
