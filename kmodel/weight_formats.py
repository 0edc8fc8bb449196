"""Weight file formats: which a weights folder may hold, told by name and checked by content.

A weights folder holds kmodel's own JSON files (params.json, provenance.json, hashes.json)
and native weight files of named formats, each told by its suffix:

    .npy                 npy          one array (no object arrays: they are pickles)
    .safetensors         safetensors  named tensors (any dtype, bfloat16 too)
    .onnx                onnx         an ONNX model (protobuf)
    .keras, .weights.h5  keras        a Keras archive (a zip, loaded in safe mode) or weights
    .json, .ubj          xgboost      an XGBoost model
    .txt                 lightgbm     a LightGBM model

Pickles (.pt, .pth, .pkl, .pickle, .joblib, .sav, .ckpt, ...) run code when loaded: they
are refused, with the format to use instead. A file's content must be what its name says,
so a pickle renamed to .safetensors, .npy or .onnx (or a torch.save zip renamed .keras) is
refused too. Nothing here imports numpy or the frameworks: the checks read bytes.
"""

from __future__ import annotations

import ast
import json
import struct
import zipfile
from pathlib import Path

from kmodel.errors import WeightFormatError

#: kmodel's own files in a weights folder (a model may not write these names)
KMODEL_FILES = ("params.json", "provenance.json", "hashes.json")
#: suffix -> format, longest suffix first where they overlap (.weights.h5 before .h5)
SUFFIXES: dict[str, str] = {
    ".npy": "npy",
    ".safetensors": "safetensors",
    ".onnx": "onnx",
    ".keras": "keras",
    ".weights.h5": "keras",
    ".json": "xgboost",
    ".ubj": "xgboost",
    ".txt": "lightgbm",
}
#: pickle suffixes -> what to save instead (by the framework that writes them)
_TORCH = ("a torch state dict as safetensors (safetensors.torch.save_file -> .safetensors, "
          "or get_weights() returning the state dict) or ONNX (.onnx)")
_SKLEARN = ("ONNX (skl2onnx -> .onnx) or the estimator's arrays from get_weights() "
            "(one .npy each)")
PICKLES: dict[str, str] = {
    ".pt": _TORCH, ".pth": _TORCH, ".ckpt": _TORCH, ".bin": _TORCH, ".tar": _TORCH,
    ".pkl": _SKLEARN, ".pickle": _SKLEARN, ".joblib": _SKLEARN, ".sav": _SKLEARN,
    ".p": _SKLEARN, ".dill": _SKLEARN, ".cloudpickle": _SKLEARN,
    ".npz": "one .npy per array (np.save with allow_pickle=False) or .safetensors",
    ".h5": "Keras' .keras (model.save) or .weights.h5 (model.save_weights)",
    ".hdf5": "Keras' .keras (model.save) or .weights.h5 (model.save_weights)",
    ".model": "XGBoost's .json or .ubj (booster.save_model), LightGBM's .txt",
}
_BY_FRAMEWORK = ("torch: .safetensors or .onnx; scikit-learn/joblib: .onnx or .npy arrays "
                 "from get_weights(); xgboost: .json/.ubj; lightgbm: .txt; keras: "
                 ".keras/.weights.h5")
_HDF5 = b"\x89HDF\r\n\x1a\n"
_MAX_HEADER = 100 << 20  # a safetensors header larger than this is not one


def _suffix(name: str) -> str:
    lower = name.lower()
    for suffix in sorted(SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix):
            return suffix
    return Path(lower).suffix


def format_of(name: str) -> str | None:
    """The format a file name says (None: not a weight format kmodel takes); kmodel's own
    files are "kmodel"."""
    if name in KMODEL_FILES:
        return "kmodel"
    return SUFFIXES.get(_suffix(name))


def name_problem(name: str) -> str | None:
    """Why a weight file's name is refused (a pickle's suffix, an unknown one), or None."""
    if format_of(name) is not None:
        return None
    suffix = _suffix(name)
    if suffix in PICKLES:
        return (f"a pickle ({suffix}), which runs code when loaded, is refused; save "
                f"{PICKLES[suffix]} instead")
    return (f"no weight format kmodel takes has the suffix {suffix or '(none)'!r}; save "
            f"one of {', '.join(SUFFIXES)} ({_BY_FRAMEWORK})")


def _is_pickle(head: bytes) -> bool:
    """Pickle protocol 2+ starts with PROTO (0x80, then the version)."""
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _zip_pickles(path: Path) -> str | None:
    """A pickle inside a zip (torch.save writes archive/data.pkl), or None."""
    with zipfile.ZipFile(path) as z:
        for member in z.namelist():
            if _suffix(member.rsplit("/", 1)[-1]) in (".pkl", ".pickle") \
                    or member.endswith("/data.pkl") or member == "data.pkl":
                return member
    return None


def content_problem(path: Path) -> str | None:
    """Why the file's content is refused: a pickle (plain, or zipped as torch.save and
    joblib do), or not what its suffix says; None when it is."""
    fmt = format_of(path.name)
    with open(path, "rb") as f:
        head = f.read(64)
    if _is_pickle(head):
        return (f"a pickle inside (whatever its name says), which runs code when loaded, is "
                f"refused; save a format kmodel takes instead ({_BY_FRAMEWORK})")
    if head[:4] == b"PK\x03\x04":
        try:
            member = _zip_pickles(path)
        except (zipfile.BadZipFile, OSError):
            member = None
        if member is not None:
            return (f"a zip holding a pickle ({member}, as torch.save writes), which runs "
                    f"code when loaded, is refused; save a format kmodel takes instead "
                    f"({_BY_FRAMEWORK})")
    why = _unlike(fmt, path, head)
    return f"{why}, though its name says {fmt}; save the file in that format" if why else None


def _unlike(fmt: str | None, path: Path, head: bytes) -> str | None:
    """How the content differs from format ``fmt`` (None: it looks like one)."""
    if fmt == "npy":
        return _npy(path, head)
    if fmt == "safetensors":
        return _safetensors(path)
    if fmt == "keras":
        return _keras(path, head)
    if fmt == "onnx":  # a ModelProto starts with its ir_version (field 1, a varint)
        return None if len(head) > 1 and head[0] == 0x08 and 0 < head[1] < 0x80 else \
            "not an ONNX model (protobuf starting with its ir_version)"
    if fmt == "xgboost":
        return None if head.lstrip()[:1] in (b"{", b"[") else \
            "not an XGBoost model (JSON or UBJSON)"
    if fmt == "lightgbm":
        return None if head.startswith((b"tree\n", b"tree\r\n")) else \
            "not a LightGBM model (text starting with 'tree')"
    if fmt == "kmodel":
        return None if head.lstrip()[:1] == b"{" else "not a kmodel JSON document"
    return None


def _npy(path: Path, head: bytes) -> str | None:
    if not head.startswith(b"\x93NUMPY") or len(head) < 12:
        return "not a .npy file (no NUMPY magic)"
    size, start = (struct.unpack("<H", head[8:10])[0], 10) if head[6] == 1 else \
        (struct.unpack("<I", head[8:12])[0], 12)
    with open(path, "rb") as f:
        f.seek(start)
        text = f.read(min(size, 1 << 20)).decode("latin1")
    try:
        header = ast.literal_eval(text.strip())
        descr = header["descr"]
    except (ValueError, SyntaxError, TypeError, KeyError, MemoryError, RecursionError):
        return "not a .npy file (its header is unreadable)"
    if _has_objects(descr):
        return "an array of Python objects, which numpy stores as a pickle"
    return None


def _has_objects(descr: object) -> bool:
    if isinstance(descr, str):
        return descr.lstrip("<>|=").startswith("O")
    if isinstance(descr, (list, tuple)):
        return any(isinstance(f, (list, tuple)) and len(f) >= 2 and _has_objects(f[1])
                   for f in descr)
    return True


def _safetensors(path: Path) -> str | None:
    size = path.stat().st_size
    with open(path, "rb") as f:
        first = f.read(8)
        if len(first) < 8:
            return "not a safetensors file (too short)"
        n = struct.unpack("<Q", first)[0]
        if n > min(size - 8, _MAX_HEADER):
            return "not a safetensors file (its header length does not fit the file)"
        try:
            header = json.loads(f.read(n))
        except ValueError:
            return "not a safetensors file (its header is not JSON)"
    if not isinstance(header, dict):
        return "not a safetensors file (its header is not a JSON object)"
    return None


def _keras(path: Path, head: bytes) -> str | None:
    if path.name.lower().endswith(".weights.h5"):
        return None if head.startswith(_HDF5) else "not an HDF5 file"
    if not head.startswith(b"PK\x03\x04"):
        return "not a Keras archive (a zip)"
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
    except (zipfile.BadZipFile, OSError):
        return "not a Keras archive (an unreadable zip)"
    return None if "config.json" in names else "not a Keras archive (no config.json)"


def problem(path: Path) -> str | None:
    """Why a file in a weights folder is refused (by its name, then its content), or None."""
    return name_problem(path.name) or content_problem(path)


def check_file(path: Path, model: str | None = None, shown: Path | None = None) -> None:
    """WeightFormatError (KM305) for a weight file kmodel does not take; ``shown``: the
    name to give the file in the message (the final one, for a temporary folder's)."""
    why = problem(path)
    if why:
        who = f"model {model!r}: " if model else ""
        raise WeightFormatError(f"{who}{shown or path}: {why}")


def check_folder(folder: Path, model: str | None = None, shown: Path | None = None) -> None:
    """Every entry of a weights folder is a plain file of a format kmodel takes
    (``shown``: the folder's name in messages)."""
    who = f"model {model!r}: " if model else ""
    for entry in sorted(folder.iterdir()):
        name = (shown or folder) / entry.name
        if entry.is_symlink() or not entry.is_file():
            raise WeightFormatError(f"{who}{name} is not a plain file; a weights folder "
                                    "holds files only (no folders or links)")
        check_file(entry, model, name)


def names_in(folder: Path) -> list[str]:
    """The weights a folder holds, as params.json lists them: the .npy files' names
    without their suffix (sorted, as always), then each safetensors file's tensor names
    (a list's in its order), then any other native file's name."""
    npy, tensors, native = [], [], []
    for entry in sorted(folder.iterdir()):
        fmt = format_of(entry.name)
        if fmt == "npy":
            npy.append(entry.name[:-4])
        elif fmt == "safetensors":
            tensors.extend(_tensor_names(entry))
        elif fmt not in (None, "kmodel"):
            native.append(entry.name)
    return sorted(npy) + tensors + native


def _tensor_names(path: Path) -> list[str]:
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    names = [k for k in header if k != "__metadata__"]
    meta = header.get("__metadata__") or {}
    if meta.get("kmodel_container") == "list" and all(k.isdigit() for k in names):
        return sorted(names, key=int)
    return sorted(names)


__all__ = ["KMODEL_FILES", "PICKLES", "SUFFIXES", "check_file", "check_folder",
           "content_problem", "format_of", "name_problem", "names_in", "problem"]
