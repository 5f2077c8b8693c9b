"""vmrun: a declarative QEMU/KVM VM launcher."""

__version__ = "0.1.0"
