"""Kubernetes' name rules, for the [kubevirt] table and what `vmrun export --format kubevirt` names."""

from __future__ import annotations

import re

# DNS-1123: a label (namespaces, most object names' parts, KubeVirt's disk and volume names) and a subdomain
# (PVC, Secret and VirtualMachine names), as k8s.io/apimachinery/pkg/util/validation checks them.
_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_LABEL = re.compile(_LABEL)
_DNS_SUBDOMAIN = re.compile(rf"{_LABEL}(\.{_LABEL})*")
# An extended resource name, as permittedHostDevices lists it: "vendor.com/NAME" (a qualified name).
_RESOURCE_NAME = re.compile(rf"{_LABEL}(\.{_LABEL})*/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
MAX_LABEL = 63
MAX_SUBDOMAIN = 253
LABEL_RULE = "1-63 of a-z, 0-9 and '-', starting and ending with a letter or digit"
SUBDOMAIN_RULE = "DNS-1123 labels joined by '.', at most 253 characters"


def is_dns_label(name: str) -> bool:
    return len(name) <= MAX_LABEL and _DNS_LABEL.fullmatch(name) is not None


def is_dns_subdomain(name: str) -> bool:
    return len(name) <= MAX_SUBDOMAIN and _DNS_SUBDOMAIN.fullmatch(name) is not None


def is_resource_name(name: str) -> bool:
    prefix, _, rest = name.partition("/")
    return len(prefix) <= MAX_SUBDOMAIN and len(rest) <= MAX_LABEL and _RESOURCE_NAME.fullmatch(name) is not None


def is_network_name(name: str) -> bool:
    """A NetworkAttachmentDefinition as Multus takes it: "name" or "namespace/name"."""
    *namespace, definition = name.split("/", 1)
    return all(is_dns_label(part) for part in namespace) and is_dns_subdomain(definition)


def is_image_reference(reference: str) -> bool:
    """Something a container runtime could pull: no blanks, no empty parts (the registry judges the rest)."""
    return bool(reference) and not any(character.isspace() for character in reference) and "//" not in reference
