"""Preflight of overlays on a base image: real qemu-img on the test's own files, a fake host tree for the rest."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from vmrun.preflight.apply import apply_plan, undo_changes
from vmrun.preflight.changes import OnDown
from vmrun.preflight.others import Others
from vmrun.preflight.plan import PreflightRefused, Status, plan_preflight
from vmrun.spec.model import Spec

from .test_preflight import ROOT_FACTS, USER_FACTS, fake_host, make_spec, messages

MIB = 2**20


def qemu_img(*args: str) -> str:
    return subprocess.run(["qemu-img", *args], check=True, capture_output=True, text=True).stdout


def make_base(path: Path, size: str = "64M", fmt: str = "qcow2") -> Path:
    qemu_img("create", "-q", "-f", fmt, str(path), size)
    return path


def overlay_spec(path: Path, base: Path, **disk: Any) -> Spec:
    return make_spec(disks=[{"id": "root", "path": str(path), "base": str(base), "format": "qcow2", **disk}])


def info(path: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(qemu_img("info", "-U", "--output=json", str(path)))
    return result


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_missing_overlay_is_created_on_the_base_and_kept_at_down(tmp_path: Path) -> None:
    base = make_base(tmp_path / "base.qcow2")
    overlay = tmp_path / "vm/root.qcow2"
    host = fake_host(tmp_path)
    plan = plan_preflight(overlay_spec(overlay, base, size="128M"), host, USER_FACTS)
    assert plan.failures == ()
    assert [str(change.step) for change in plan.changes] == [
        f"mkdir {tmp_path}/vm", f"qemu-img create -q -f qcow2 -b {base} -F qcow2 {overlay} 128M"]
    assert messages(plan, Status.OK)[-1] == (
        f"creating {overlay} (an overlay on {base} (qcow2), 128M); down keeps it")
    before = digest(base)
    applied = apply_plan(plan, host)
    created = info(overlay)
    assert (created["format"], created["virtual-size"], created["full-backing-filename"]) == (
        "qcow2", 128 * MIB, str(base))
    assert undo_changes(applied, host) == [] and overlay.exists()
    again = plan_preflight(overlay_spec(overlay, base, size="128M"), host, USER_FACTS)
    assert again.changes == () and messages(again, Status.OK)[-1] == f"{overlay} (an overlay on {base})"
    assert digest(base) == before


def test_overlay_without_size_takes_the_bases_and_a_raw_base_is_named_as_raw(tmp_path: Path) -> None:
    base = make_base(tmp_path / "base.img", "32M", "raw")
    overlay = tmp_path / "root.qcow2"
    host = fake_host(tmp_path)
    plan = plan_preflight(overlay_spec(overlay, base), host, USER_FACTS)
    assert [str(change.step) for change in plan.changes] == [
        f"qemu-img create -q -f qcow2 -b {base} -F raw {overlay}"]
    apply_plan(plan, host)
    assert info(overlay)["virtual-size"] == 32 * MIB


def test_ephemeral_overlay_is_recreated_at_each_up_and_deleted_at_down(tmp_path: Path) -> None:
    base = make_base(tmp_path / "base.qcow2")
    overlay = tmp_path / "root.qcow2"
    host = fake_host(tmp_path)
    spec = overlay_spec(overlay, base, ephemeral=True)
    plan = plan_preflight(spec, host, USER_FACTS)
    [change] = plan.changes
    assert change.on_down is OnDown.UNDO
    assert messages(plan, Status.OK)[-1] == f"creating {overlay} (an overlay on {base} (qcow2)); down deletes it"
    apply_plan(plan, host)
    qemu_img("resize", "-q", str(overlay), "96M")  # something the guest left behind
    again = plan_preflight(spec, host, USER_FACTS)
    assert messages(again, Status.OK)[-1] == (
        f"recreating {overlay} (an overlay on {base} (qcow2)); down deletes it")
    applied = apply_plan(again, host)
    assert info(overlay)["virtual-size"] == 64 * MIB
    assert undo_changes(applied, host) == [] and not overlay.exists()


def test_overlay_and_base_mistakes_are_refused_with_the_way_out(tmp_path: Path) -> None:
    base = make_base(tmp_path / "base.qcow2", "1G")
    other = make_base(tmp_path / "other.qcow2")
    text = tmp_path / "notes.txt"
    text.write_text("not a disk\n")
    on_other = tmp_path / "on-other.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(other), "-F", "qcow2", str(on_other))
    raw = make_base(tmp_path / "plain.raw", "1M", "raw")
    spec = make_spec(disks=[
        {"id": "a", "path": str(tmp_path / "a.qcow2"), "base": str(tmp_path / "missing.qcow2"), "format": "qcow2"},
        {"id": "b", "path": str(tmp_path / "b.qcow2"), "base": str(text), "format": "qcow2"},
        {"id": "c", "path": str(tmp_path / "c.qcow2"), "base": str(base), "format": "qcow2", "size": "512M"},
        {"id": "d", "path": str(on_other), "base": str(base), "format": "qcow2"},
        {"id": "e", "path": str(raw), "base": str(base), "format": "qcow2", "ephemeral": True},
        {"id": "f", "path": str(tmp_path / "f.qcow2"), "base": str(tmp_path), "format": "qcow2"},
        {"id": "g", "path": str(tmp_path / "g.qcow2"), "base": str(other), "format": "qcow2"},
    ])
    host = fake_host(tmp_path)
    plan = plan_preflight(spec, host, USER_FACTS, others=Others(writable_disks=frozenset({str(other)})))
    assert messages(plan) == [
        f"base {tmp_path}/missing.qcow2 does not exist",
        f"base {text} is not a disk image: a raw image is whole 512-byte sectors, it has 11 bytes",
        f"size 512M is below the virtual size of base {base} (1G): an overlay cannot shrink its base",
        f"{on_other} is an overlay on {other}, not on {base}: delete {on_other} to recreate it on {base}, "
        f"or point base at {other}",
        f"{raw} is a raw image, not an overlay on {base}: delete {raw} to recreate it on {base}",
        f"base {tmp_path} is a directory, not a disk image",
        f"base {other} is used writable by another running vmrun VM; a base must never be written",
    ]
    with pytest.raises(PreflightRefused, match="preflight: disks a: base"):
        apply_plan(plan, host)
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "base.qcow2", "host", "notes.txt", "on-other.qcow2", "other.qcow2", "plain.raw"]


def test_base_qemus_user_cannot_read_is_refused_naming_the_component(tmp_path: Path, reachable_tmp: Path) -> None:
    private = reachable_tmp / "private"
    private.mkdir()
    base = make_base(private / "base.qcow2")
    private.chmod(0o700)
    spec = overlay_spec(reachable_tmp / "root.qcow2", base)
    host = fake_host(tmp_path)
    assert messages(plan_preflight(spec, host, ROOT_FACTS)) == [
        f"qemu runs as nobody, who cannot read base {base}: {private} (mode 0o700)"]
    private.chmod(0o755)
    base.chmod(0o644)  # a file needs only reading, not the x a directory needs
    assert plan_preflight(spec, host, ROOT_FACTS).failures == ()
    base.chmod(0o640)
    assert messages(plan_preflight(spec, host, ROOT_FACTS)) == [
        f"qemu runs as nobody, who cannot read base {base}: {base} (mode 0o640)"]
