"""The cloud-init NoCloud seed: the user's files checked, then written as an ISO9660 volume labelled cidata.

Reading the files a spec names is not host state, so `validate` checks them here, outside the pure
check stage; `up` reads them again and writes the seed (file I/O in the launch phase, never in render).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path

import attrs

from vmrun.errors import Problem, SpecError
from vmrun.files import write_whole
from vmrun.progress import Say
from vmrun.record import Record
from vmrun.spec.model import CloudInit, Spec
from vmrun.state.locations import RunPaths

SEED_LABEL = "cidata"  # NoCloud looks for a filesystem with this label
CLOUD_CONFIG = "#cloud-config"
SCRIPT = "#!"
# NoCloud's file names, and the ISO9660 names beside them (d-characters only: Rock Ridge and Joliet carry the dash).
_ISO_NAMES = {"meta-data": "META_DATA.;1", "user-data": "USER_DATA.;1", "network-config": "NETWORK_CONFIG.;1"}


@attrs.frozen(repr=False)
class Seed(Record):
    """What goes on the seed: file name -> content, meta-data included."""

    files: Mapping[str, bytes]
    instance_id: str


def _read(path: Path, key: str) -> tuple[str | None, Problem | None]:
    try:
        return path.read_text(encoding="utf-8"), None
    except FileNotFoundError:
        return None, Problem(f"cloud_init.{key}", f"{path}: no such file")
    except UnicodeDecodeError:
        return None, Problem(f"cloud_init.{key}", f"{path}: not UTF-8 text", "vmrun takes no gzip or binary user data")
    except OSError as exc:
        return None, Problem(f"cloud_init.{key}", f"{path}: {exc.strerror}")


def _yaml_problem(text: str, path: Path, key: str, what: str) -> Problem | None:
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" line {mark.line + 1}" if mark else ""
        return Problem(f"cloud_init.{key}", f"{path}{where}: not valid YAML: {exc.problem or exc.context}")
    except yaml.YAMLError as exc:
        return Problem(f"cloud_init.{key}", f"{path}: not valid YAML: {exc}")
    if data is not None and not isinstance(data, dict):
        return Problem(f"cloud_init.{key}", f"{path}: {what} must be a YAML mapping, not a {type(data).__name__}")
    return None


def _user_data_problem(text: str, path: Path) -> Problem | None:
    if text.startswith(CLOUD_CONFIG):
        return _yaml_problem(text, path, "user_data", "#cloud-config")
    if text.startswith(SCRIPT):
        return None
    return Problem("cloud_init.user_data", f"{path} line 1: must start with {CLOUD_CONFIG!r} or a {SCRIPT!r} script",
                   f"put {CLOUD_CONFIG} on the first line")


def _files(cloud_init: CloudInit) -> Iterator[tuple[str, str, Path]]:
    """(seed file name, spec key, path) of each user file."""
    yield "user-data", "user_data", cloud_init.user_data
    if cloud_init.network_config is not None:
        yield "network-config", "network_config", cloud_init.network_config


def _read_checked(cloud_init: CloudInit) -> tuple[dict[str, str], list[Problem]]:
    texts, problems = {}, []
    for name, key, path in _files(cloud_init):
        text, problem = _read(path, key)
        if text is not None:
            texts[name] = text
            if key == "user_data":
                problem = _user_data_problem(text, path)
            else:
                problem = _yaml_problem(text, path, key, "network-config")
        if problem is not None:
            problems.append(problem)
    return texts, problems


def seed_file_problems(spec: Spec) -> list[Problem]:
    """Problems with the files [cloud_init] names: missing, unreadable, not cloud-config, not YAML."""
    if spec.cloud_init is None:
        return []
    return _read_checked(spec.cloud_init)[1]


def seed_texts(spec: Spec, source: str) -> dict[str, str]:
    """The user's files by seed file name (user-data, network-config) as they are now; SpecError when they went
    bad since validate."""
    assert spec.cloud_init is not None
    texts, problems = _read_checked(spec.cloud_init)
    if problems:
        raise SpecError(source, problems)
    return texts


def make_seed(spec: Spec, source: str) -> Seed:
    """The seed's files from the user's files as they are now; SpecError when they went bad since validate."""
    import hashlib  # OpenSSL takes ~3 ms to load; validate and render need none of it

    assert spec.cloud_init is not None
    texts = seed_texts(spec, source)
    files = {name: text.encode() for name, text in texts.items()}
    meta_data = {"local-hostname": spec.name, **spec.cloud_init.meta_data}
    # A hash of everything else on the seed: cloud-init re-runs its per-instance modules when the seed changes.
    digest = hashlib.sha256(json.dumps([sorted(meta_data.items()), sorted(texts.items())]).encode()).hexdigest()
    meta_data = {"instance-id": f"iid-{spec.name}-{digest[:16]}", **meta_data}
    # JSON is YAML, and needs no quoting rules of its own.
    files["meta-data"] = (json.dumps(meta_data, indent=1) + "\n").encode()
    return Seed(files=files, instance_id=meta_data["instance-id"])


def write_seed(seed: Seed, target: Path) -> None:
    """An ISO9660 image with Rock Ridge and Joliet names, labelled cidata, as cloud-localds makes it."""
    import io

    import pycdlib

    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, vol_ident=SEED_LABEL, joliet=3, rock_ridge="1.09")
    for name in sorted(seed.files):
        content = seed.files[name]
        iso.add_fp(io.BytesIO(content), len(content), f"/{_ISO_NAMES[name]}", rr_name=name, joliet_path=f"/{name}")
    try:
        write_whole(target, lambda partial: iso.write(str(partial)))
    finally:
        iso.close()


def prepare_seed(seed: Seed | None, paths: RunPaths, say: Say) -> None:
    """`up` rebuilds the seed every time, from the files as they were when it started."""
    if seed is None:
        return
    paths.make_state_dir()
    write_seed(seed, paths.cloud_init_seed)
    say(f"cloud-init seed {paths.cloud_init_seed} (instance-id {seed.instance_id})")


def place_seed(image: bytes, paths: RunPaths) -> None:
    """A seed built elsewhere (by a migration's source), byte for byte: its guest may have read it already."""
    paths.make_state_dir()
    write_whole(paths.cloud_init_seed, lambda partial: partial.write_bytes(image))
