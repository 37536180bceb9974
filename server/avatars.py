"""The avatar store: uploaded portraits on disk, their registrations, and built rigs in memory.

Layout under ``<data_dir>/avatars/<id>/``: ``portrait.<ext>`` (the uploaded bytes, untouched)
and ``meta.json``. The id is derived from the file's content, so uploading the same portrait
twice gives the same avatar. The engine's registration cache lives in ``<data_dir>/cache``.
The bundled portrait is always present as ``default`` and cannot be deleted.

Registrations run one at a time (decoding a large portrait takes memory in proportion to its
pixels); a few more wait their turn, and uploads beyond those are refused with 503.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path

from emolive.engine.avatar import register_avatar
from emolive.engine.errors import BadInputError
from emolive.engine.formats import FRAME_SIZE
from emolive.engine.offline import DEFAULT_PORTRAIT
from emolive.engine.rig import Rig, build_rig
from emolive.server.errors import ApiError

DEFAULT_ID = "default"
REGISTER_SIZE = FRAME_SIZE
_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
_UPLOAD_PREFIX = ".upload-"
# Registrations at once, and uploads that may wait for one before 503.
REGISTER_SLOTS = 1
REGISTER_QUEUE = 4


@dataclass(frozen=True)
class AvatarInfo:
    id: str
    name: str
    face_box: tuple[int, int, int, int]  # x0, y0, x1, y1 in the 512 px registered frame
    size: int
    created: float
    builtin: bool = False

    def to_json(self) -> dict:
        return asdict(self)


class AvatarStore:
    """Thread-safe avatar catalogue; blocking work is done by callers in worker threads
    (the ``*_async`` methods do that for the event loop)."""

    def __init__(self, data_dir: Path, rig_cache_size: int = 8, retry_after_s: int = 5) -> None:
        self.root = Path(data_dir) / "avatars"
        self.cache_dir = Path(data_dir) / "cache"
        self.root.mkdir(parents=True, exist_ok=True)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._infos: dict[str, AvatarInfo] = {}
        self._sources: dict[str, Path] = {}
        self._rigs: OrderedDict[tuple[str, int], Rig] = OrderedDict()
        self._rig_cache_size = max(1, rig_cache_size)
        self._building: dict[tuple[str, int], threading.Lock] = {}
        self._sources[DEFAULT_ID] = DEFAULT_PORTRAIT
        self._registering = asyncio.Semaphore(REGISTER_SLOTS)
        self._waiting = 0
        self._retry_after_s = retry_after_s
        self._remove_stale_uploads()
        self._load()

    # -- catalogue -----------------------------------------------------------------------

    def _remove_stale_uploads(self) -> None:
        """Temporary folders of registrations a crash or kill interrupted."""
        for stale in self.root.glob(f"{_UPLOAD_PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)

    def _load(self) -> None:
        for meta in sorted(self.root.glob("*/meta.json")):
            try:
                data = json.loads(meta.read_text())
                portrait = meta.parent / data["file"]
                info = AvatarInfo(id=data["id"], name=data["name"], face_box=tuple(data["face_box"]),
                                  size=int(data["size"]), created=float(data["created"]))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # a half-written or foreign folder: not an avatar
            if portrait.is_file() and info.id == meta.parent.name:
                self._infos[info.id] = info
                self._sources[info.id] = portrait

    def ensure_default(self) -> AvatarInfo:
        """Register the bundled portrait (blocking; cached on disk after the first run)."""
        with self._lock:
            if DEFAULT_ID in self._infos:
                return self._infos[DEFAULT_ID]
        avatar = register_avatar(DEFAULT_PORTRAIT, size=REGISTER_SIZE, cache_dir=self.cache_dir, warn=lambda _m: None)
        info = AvatarInfo(id=DEFAULT_ID, name=DEFAULT_PORTRAIT.name, face_box=tuple(int(v) for v in avatar.face_box),
                          size=REGISTER_SIZE, created=0.0, builtin=True)
        with self._lock:
            self._infos[DEFAULT_ID] = info
        return info

    def list(self) -> list[AvatarInfo]:
        with self._lock:
            infos = list(self._infos.values())
        return sorted(infos, key=lambda i: (not i.builtin, i.created, i.id))

    def get(self, avatar_id: str) -> AvatarInfo | None:
        with self._lock:
            return self._infos.get(avatar_id)

    def exists(self, avatar_id: str) -> bool:
        with self._lock:
            return avatar_id in self._sources

    def delete(self, avatar_id: str) -> bool:
        """Remove an uploaded avatar; False if unknown. Running sessions keep their rig."""
        if avatar_id == DEFAULT_ID:
            raise PermissionError("the bundled avatar cannot be deleted")
        with self._lock:
            if avatar_id not in self._infos:
                return False
            del self._infos[avatar_id]
            self._sources.pop(avatar_id, None)
            for key in [k for k in self._rigs if k[0] == avatar_id]:
                del self._rigs[key]
        shutil.rmtree(self.root / avatar_id, ignore_errors=True)
        return True

    # -- registration --------------------------------------------------------------------

    def add(self, data: bytes, filename: str) -> AvatarInfo:
        """Register an uploaded portrait (blocking: face mesh + disk). Raises BadInputError
        with a one-line message naming ``filename`` if the image cannot be used."""
        name = _safe_name(filename)
        suffix = Path(name).suffix.lower()
        if suffix not in _SUFFIXES:
            suffix = ".img"  # the decoder sniffs the content, the name is only for messages
        avatar_id = hashlib.sha256(data).hexdigest()[:16]
        with self._lock:
            if avatar_id in self._infos:
                return self._infos[avatar_id]
        with tempfile.TemporaryDirectory(dir=self.root, prefix=_UPLOAD_PREFIX) as tmp:
            path = Path(tmp) / name
            path.write_bytes(data)
            avatar = register_avatar(path, size=REGISTER_SIZE, cache_dir=self.cache_dir, warn=lambda _m: None)
            info = AvatarInfo(id=avatar_id, name=name, face_box=tuple(int(v) for v in avatar.face_box),
                              size=REGISTER_SIZE, created=time.time())
            folder = self.root / avatar_id
            folder.mkdir(exist_ok=True)
            portrait = folder / f"portrait{suffix}"
            shutil.move(str(path), portrait)
            meta = {**info.to_json(), "file": portrait.name}
            (folder / "meta.json.tmp").write_text(json.dumps(meta))
            (folder / "meta.json.tmp").replace(folder / "meta.json")
        with self._lock:
            self._infos[avatar_id] = info
            self._sources[avatar_id] = portrait
        return info

    async def add_async(self, data: bytes, filename: str) -> AvatarInfo:
        """:meth:`add` in a worker thread, REGISTER_SLOTS at a time; 503 when REGISTER_QUEUE
        uploads already wait (they would hold their bytes in memory meanwhile)."""
        if self._registering.locked() and self._waiting >= REGISTER_QUEUE:
            raise ApiError(503, "too many portraits are being registered; retry later",
                           {"Retry-After": str(self._retry_after_s)})
        self._waiting += 1
        try:
            await self._registering.acquire()
        finally:
            self._waiting -= 1
        try:
            return await asyncio.to_thread(self.add, data, filename)
        finally:
            self._registering.release()

    # -- rigs ----------------------------------------------------------------------------

    def rig(self, avatar_id: str, size: int) -> Rig:
        """The rig of ``avatar_id`` at ``size`` px (blocking on a miss: ~0.3 s), LRU-cached."""
        key = (avatar_id, size)
        with self._lock:
            if key in self._rigs:
                self._rigs.move_to_end(key)
                return self._rigs[key]
            source = self._sources.get(avatar_id)
            if source is None:
                raise KeyError(avatar_id)
            building = self._building.setdefault(key, threading.Lock())
        with building:  # one build per key even when several sessions start at once
            with self._lock:
                if key in self._rigs:
                    return self._rigs[key]
            avatar = register_avatar(source, size=size, cache_dir=self.cache_dir, warn=lambda _m: None)
            rig = build_rig(avatar.image, avatar.landmarks)
            with self._lock:
                self._building.pop(key, None)
                if self._sources.get(avatar_id) == source:
                    self._rigs[key] = rig
                    while len(self._rigs) > self._rig_cache_size:
                        self._rigs.popitem(last=False)
            return rig

    async def rig_async(self, avatar_id: str, size: int) -> Rig:
        return await asyncio.to_thread(self.rig, avatar_id, size)


def _safe_name(filename: str | None) -> str:
    """A short file name safe to create: the user's base name with odd characters replaced."""
    base = Path(filename or "upload").name
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._") or "upload"
    return base[-80:]


__all__ = ["AvatarInfo", "AvatarStore", "BadInputError", "DEFAULT_ID"]
