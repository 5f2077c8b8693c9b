"""Preflight's findings for what VMs share on a host: its CPUs and NUMA nodes, huge page pools, KSM."""

from __future__ import annotations

from vmrun.host.facts import HostFacts
from vmrun.host.system import Host, format_cpu_list, hugepage_pool
from vmrun.host.view import KSM_RUN
from vmrun.preflight.changes import Action, Change, Found, OnDown, Step, fail_finding, ok_finding, warn_finding
from vmrun.preflight.others import Others
from vmrun.spec.model import Spec
from vmrun.units import format_size


def inspect_ksm(spec: Spec, host: Host, facts: HostFacts, others: Others) -> Found:
    if not spec.host.ksm:
        return
    current = host.read(KSM_RUN)
    if current is None:
        yield warn_finding("ksm", "this kernel has no KSM (/sys/kernel/mm/ksm): running without it")
    elif current == "1" and others.ksm_previous is not None:
        # Another vmrun VM turned it on: take on its duty, so the last of them down sets it back.
        yield ok_finding("ksm", f"KSM is on for other vmrun VMs; the last VM down sets run back to "
                              f"{others.ksm_previous}")
        yield _ksm_change(others.ksm_previous)
    elif current == "1":
        yield ok_finding("ksm", "KSM is running")
    elif not facts.drop_privileges:
        yield warn_finding("ksm", f"KSM is off (run = {current}) and only root can turn it on: running without it")
    else:
        yield ok_finding("ksm", f"turning KSM on; the last VM that wants it sets run back to {current} "
                                "when it goes down")
        yield _ksm_change(current)


def _ksm_change(previous: str) -> Change:
    return Change(Step(Action.WRITE, KSM_RUN, "1"), (Step(Action.WRITE, KSM_RUN, previous),), OnDown.SHARED_KSM)


def inspect_cpus(spec: Spec, host: Host) -> Found:
    machine = spec.machine
    if not machine.pinned:
        return
    present, online = host.cpus()
    for field, cpus in (("vcpu_pin", machine.vcpu_pin), ("emulator_pin", machine.emulator_pin)):
        if cpus is None:
            continue
        name = f"machine.{field}"
        absent = sorted(set(cpus) - present)
        offline = sorted(set(cpus) & present - online)
        if absent:
            yield fail_finding(name, f"host CPU {format_cpu_list(set(absent))} does not exist (this host has CPUs "
                                     f"{format_cpu_list(present)})")
        if offline:
            yield fail_finding(name, f"host CPU {format_cpu_list(set(offline))} is offline (online: "
                                     f"{format_cpu_list(online)})")
        if not absent and not offline:
            yield ok_finding(name, f"host CPUs {format_cpu_list(set(cpus))}")


def inspect_numa_node(spec: Spec, host: Host) -> Found:
    node = spec.machine.numa_node
    if node is None:
        return
    present, online = host.numa_nodes()
    if node not in present:
        yield fail_finding("machine.numa_node", f"host NUMA node {node} does not exist (this host has nodes "
                                                f"{format_cpu_list(present)})")
    elif node not in online:
        yield fail_finding("machine.numa_node", f"host NUMA node {node} is offline (online: "
                                                f"{format_cpu_list(online)})")
    else:
        yield ok_finding("machine.numa_node", f"guest RAM bound to host NUMA node {node}")


def inspect_hugepages(spec: Spec, host: Host, facts: HostFacts, others: Others) -> Found:
    machine, name = spec.machine, "machine.hugepages"
    if machine.hugepages is None:
        return
    page = machine.hugepages.bytes
    pool = hugepage_pool(page, machine.numa_node)
    where = f"{machine.hugepages} pool" + (f" of NUMA node {machine.numa_node}" if machine.numa_node is not None
                                           else "")
    counts = host.hugepage_counts(pool)
    if counts is None:
        yield fail_finding(name, f"this host has no {where} ({pool})")
        return
    needed = machine.memory // page
    missing = needed - (counts["free"] - counts["reserved"])
    if missing <= 0:
        yield ok_finding(name, f"{needed} pages from the {where} ({counts['free']} free)")
        return
    available = host.memory_available()
    if not facts.drop_privileges:
        yield fail_finding(name, f"{needed} pages needed, {counts['free'] - counts['reserved']} free in the {where}, "
                                 f"and only root can reserve more: sudo vmrun preflight")
    elif available is not None and missing * page > available:
        yield fail_finding(name, f"{needed} pages needed, {counts['free'] - counts['reserved']} free in the {where}, "
                                 f"and the pool cannot grow by {format_size(missing * page)}: the host has "
                                 f"{format_size(available)} available")
    else:
        total = f"{pool}/nr_hugepages"
        without_vmrun = counts["total"] - others.hugepages.get(total, 0)
        yield ok_finding(name, f"reserving {missing} more pages in the {where}; down gives them back")
        yield Change(Step(Action.WRITE, total, str(counts["total"] + missing)),
                     (Step(Action.WRITE, total, str(without_vmrun)),), OnDown.SHARED_HUGEPAGES, pages=missing)
