"""Calibration artifacts on disk: fingerprint, atomic save under a lock, validated load.

One artifact per fingerprint = (model weights hash, config hash, calibration-set hash,
format version), stored as a directory ``<root>/<id>/`` with

- ``tensors.safetensors``: the calibrated tensors (the id is in the file's metadata),
- ``manifest.json``: config, fingerprints, created, library version, per-file sha256 and
  size, calibration seconds. It is the commit marker: written last.

The directory is assembled under a temporary name and renamed into place, so a reader
sees either nothing or a complete artifact; writers serialise on ``<root>/<id>.lock``
(``filelock``), so two servers starting together calibrate once. Loading re-checks every
field and checksum: a truncated, corrupted or mismatched artifact is reported as
``invalid`` with the reason and is never used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

logger = logging.getLogger(__name__)

__all__ = [
    "FORMAT_VERSION",
    "CalibrationCache",
    "CalibrationCacheError",
    "Fingerprint",
    "LoadResult",
    "calibration_set_fingerprint",
    "library_version",
    "model_fingerprint",
    "read_artifact",
    "write_artifact",
]

FORMAT_VERSION = 1
TENSORS_FILE = "tensors.safetensors"
MANIFEST_FILE = "manifest.json"
#: tensors larger than this are fingerprinted from a strided sample plus their sum
FULL_HASH_MAX_ELEMENTS = 1 << 22


class CalibrationCacheError(RuntimeError):
    """An artifact is invalid and rebuilding it was not allowed."""


def library_version() -> str:
    try:
        return metadata.version("trdq-server")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def model_fingerprint(module: torch.nn.Module) -> str:
    """sha256 over names, shapes, dtypes and values of the module's state.

    Small tensors are hashed in full; large ones via a fixed strided sample of 2^22
    values plus their float64 sum, which catches any retrained or different checkpoint
    at a fraction of the cost of hashing gigabytes.
    """
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        flat = t.reshape(-1)
        if flat.numel() > FULL_HASH_MAX_ELEMENTS:
            stride = flat.numel() // FULL_HASH_MAX_ELEMENTS
            h.update(repr(float(flat.double().sum())).encode())
            flat = flat[::stride]
        data = flat.cpu().contiguous()
        if data.dtype == torch.bfloat16 or (data.is_floating_point() and data.element_size() == 1):
            data = data.float()  # numpy has no bf16 / fp8
        h.update(data.numpy().tobytes())
    return h.hexdigest()


def calibration_set_fingerprint(prompts: list[str], seed: int) -> str:
    payload = json.dumps({"prompts": list(prompts), "seed": seed}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass(frozen=True)
class Fingerprint:
    """What a calibration artifact was computed from: the model's weights, the config, the
    prompts and seed, the calibration method's version (``trdq.calibration.METHOD_VERSION``:
    a change to how a config calibrates makes earlier artifacts misses, not stale hits) and
    the file format."""

    model: str
    config: str
    calibration: str
    method: int = 0
    format_version: int = FORMAT_VERSION

    @property
    def id(self) -> str:
        raw = f"{self.model}:{self.config}:{self.calibration}:{self.method}:{self.format_version}"
        return hashlib.sha256(raw.encode()).hexdigest()[:20]


@dataclass
class LoadResult:
    status: str  # "hit" | "miss" | "invalid"
    reason: str = ""
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_artifact(
    directory: Path,
    fingerprint: Fingerprint,
    tensors: dict[str, torch.Tensor],
    manifest_extra: dict[str, Any],
) -> Path:
    """Atomically create ``directory`` holding the tensors and manifest (replaces it)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f".tmp-{directory.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        tensor_path = tmp / TENSORS_FILE
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in tensors.items()},
            str(tensor_path),
            metadata={"trdq_id": fingerprint.id, "format_version": str(FORMAT_VERSION)},
        )
        manifest = {
            "id": fingerprint.id,
            "format_version": FORMAT_VERSION,
            "fingerprints": asdict(fingerprint),
            "library_version": library_version(),
            "created": datetime.now(timezone.utc).isoformat(),
            "files": {
                TENSORS_FILE: {
                    "sha256": _sha256_file(tensor_path),
                    "bytes": tensor_path.stat().st_size,
                }
            },
            **manifest_extra,
        }
        with open(tmp / MANIFEST_FILE, "w", encoding="utf-8") as fh:
            json.dump(manifest, fh, indent=2, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        _fsync_dir(tmp)
        if directory.exists():
            trash = directory.parent / f".trash-{directory.name}-{uuid.uuid4().hex[:8]}"
            os.rename(directory, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.rename(tmp, directory)
        _fsync_dir(directory.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def read_artifact(directory: Path, expected: Fingerprint | None = None) -> LoadResult:
    """Load and validate an artifact directory; never raises for a bad artifact."""
    directory = Path(directory)
    if not directory.exists():
        return LoadResult("miss", "no artifact")
    manifest_path = directory / MANIFEST_FILE
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return LoadResult("invalid", "manifest missing (incomplete artifact)")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return LoadResult("invalid", f"manifest unreadable: {exc}")
    if not isinstance(manifest, dict):
        return LoadResult("invalid", "manifest is not a JSON object")
    if manifest.get("format_version") != FORMAT_VERSION:
        return LoadResult("invalid", f"format version {manifest.get('format_version')!r} "
                                     f"!= {FORMAT_VERSION}")
    if expected is not None:
        stored = manifest.get("fingerprints") or {}
        for key, value in asdict(expected).items():
            if stored.get(key) != value:
                return LoadResult("invalid", f"fingerprint mismatch on {key!r}")
        if manifest.get("id") != expected.id:
            return LoadResult("invalid", "artifact id mismatch")
    file_info = (manifest.get("files") or {}).get(TENSORS_FILE) or {}
    tensor_path = directory / TENSORS_FILE
    if not tensor_path.exists():
        return LoadResult("invalid", "tensor file missing")
    size = tensor_path.stat().st_size
    if size != file_info.get("bytes"):
        return LoadResult("invalid", f"tensor file has {size} bytes, manifest says "
                                     f"{file_info.get('bytes')} (truncated?)")
    if _sha256_file(tensor_path) != file_info.get("sha256"):
        return LoadResult("invalid", "tensor file checksum mismatch (corrupted)")
    try:
        tensors = load_file(str(tensor_path))
    except (SafetensorError, OSError, ValueError) as exc:
        return LoadResult("invalid", f"tensor file unreadable: {exc}")
    return LoadResult("hit", "", tensors, manifest)


class CalibrationCache:
    """A directory of artifacts keyed by fingerprint id."""

    def __init__(self, root: str | Path, lock_timeout_s: float = 3600.0) -> None:
        self.root = Path(root).expanduser()
        self.lock_timeout_s = lock_timeout_s

    def path_for(self, fingerprint: Fingerprint) -> Path:
        return self.root / fingerprint.id

    def lock(self, fingerprint: Fingerprint) -> FileLock:
        self.root.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.root / f"{fingerprint.id}.lock"), timeout=self.lock_timeout_s)

    def load(self, fingerprint: Fingerprint) -> LoadResult:
        start = time.perf_counter()
        result = read_artifact(self.path_for(fingerprint), fingerprint)
        if result.status == "invalid":
            logger.warning("calibration artifact %s invalid: %s", fingerprint.id, result.reason)
        else:
            logger.info("calibration artifact %s: %s (%.2f s)", fingerprint.id, result.status,
                        time.perf_counter() - start)
        return result

    def seed_from(self, shipped_root: Path, fingerprint: Fingerprint) -> bool:
        """Copy a shipped artifact (e.g. the zoo's) into this cache if it has none yet.

        Call under ``lock``. The copy lands in a temporary folder and is renamed into
        place, and the normal ``load`` validates it afterwards like any other artifact.
        """
        source = Path(shipped_root) / fingerprint.id
        target = self.path_for(fingerprint)
        if target.exists() or not (source / "manifest.json").is_file():
            return False
        staging = self.root / f".{fingerprint.id}.seed-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(source, staging)
        os.replace(staging, target)
        logger.info("calibration artifact %s seeded from %s", fingerprint.id, shipped_root)
        return True

    def save(self, fingerprint: Fingerprint, tensors: dict[str, torch.Tensor],
             manifest_extra: dict[str, Any]) -> Path:
        path = write_artifact(self.path_for(fingerprint), fingerprint, tensors, manifest_extra)
        logger.info("calibration artifact %s written to %s", fingerprint.id, path)
        return path
