"""The VM name rule alone: commands that only look VMs up by name (`status`) check it without the spec model."""

from __future__ import annotations

import re

VM_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
VM_NAME_RULE = "use 1-63 of a-z, 0-9 and '-'"


def is_vm_name(name: str) -> bool:
    return VM_NAME.fullmatch(name) is not None
