"""Data set adapters: one registry, each adapter turning a source tree into a list of faces.

An adapter only *lists* (cheap, on the driver): which files are faces, of which subject and
expression. Reading and aligning the pixels happens later in Ray Data actors, which call
`adapter.read(face)` for the raw bytes. Anything that cannot be used becomes a `Reject` with the
file and the reason; nothing is dropped silently. Sources may be local paths or s3:// URIs.

    adapter = create_adapter("ckplus48", source="/data/ckplus48")
    listing = adapter.list()     # Listing(classes, faces, rejects, notes)
"""

from __future__ import annotations

import csv
import io
import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from fersnet_ray.store import open_location, redact

CKPLUS_CLASSES = ("anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise")
SIX_CLASSES = ("anger", "disgust", "fear", "happy", "sadness", "surprise")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".pgm", ".ppm", ".webp")
# Spellings seen in public releases (Oulu-CASIA "Happiness", MMI "Happy", ...).
ALIASES = {
    "happiness": "happy",
    "sad": "sadness",
    "surprised": "surprise",
    "angry": "anger",
    "disgusted": "disgust",
    "fearful": "fear",
    "afraid": "fear",
}


class SourceError(ValueError):
    """The source as a whole cannot be used (missing folder, manifest without required columns)."""


@dataclass(frozen=True)
class SourceFace:
    source: str  # path relative to the source root ("virtual" for generated faces)
    subject: str
    label: int
    sequence: str = ""
    frame: int = -1


@dataclass(frozen=True)
class Reject:
    source: str
    reason: str


@dataclass
class Listing:
    classes: tuple[str, ...]
    faces: list[SourceFace] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was left out by design, e.g. unlabelled sequences


ADAPTERS: dict[str, type["Adapter"]] = {}


def register(name: str) -> Callable[[type["Adapter"]], type["Adapter"]]:
    def wrap(cls: type[Adapter]) -> type[Adapter]:
        cls.name = name
        ADAPTERS[name] = cls
        return cls

    return wrap


def create_adapter(name: str, source: str | None = None, **options) -> "Adapter":
    """Builds the adapter registered as `name`; options the adapter does not take are an error."""
    if name not in ADAPTERS:
        raise SourceError(f"unknown data set adapter {name!r}; known: {', '.join(sorted(ADAPTERS))}")
    return ADAPTERS[name](source, **options)


def canonical(label: str, classes: tuple[str, ...]) -> str | None:
    """Maps a folder or label spelling onto a class name, or None if unknown."""
    key = label.strip().lower()
    key = ALIASES.get(key, key)
    return key if key in classes else None


def _frame_number(stem: str) -> int:
    digits = re.findall(r"\d+", stem)
    return int(digits[-1]) if digits else -1


class Adapter:
    """Base: a source root (local or s3) and the file operations adapters share."""

    name = "base"
    description = ""
    needs_source = True

    def __init__(self, source: str | None):
        if self.needs_source and not source:
            raise SourceError(f"data set {self.name!r} needs --source")
        self.source = source

    # The fsspec filesystem is built lazily so adapters pickle cheaply into Ray actors.
    def _location(self):
        if not hasattr(self, "_loc"):
            self._loc = open_location(self.source)
        return self._loc

    @property
    def root(self) -> str:
        return self._location()[1]

    def _require_dir(self, path: str) -> None:
        fs = self._location()[0]
        if not fs.isdir(path):
            raise SourceError(f"source directory {redact(path)!r} does not exist")

    def _files(self, under: str = "") -> list[str]:
        """All files under root/under, as sorted paths relative to the root (dotfiles skipped)."""
        fs, root = self._location()
        base = posixpath.join(root, under) if under else root
        self._require_dir(base)
        rels = []
        for p in fs.find(base):
            rel = posixpath.relpath(p, root)
            if not any(part.startswith(".") for part in rel.split("/")):
                rels.append(rel)
        return sorted(rels)

    def _read_text(self, rel: str) -> str:
        fs, root = self._location()
        with fs.open(posixpath.join(root, rel), "rb") as f:
            return f.read().decode("utf-8", errors="replace")

    def read(self, face: SourceFace) -> bytes:
        """Raw bytes of a face's image file (decoded and checked later, in the aligner)."""
        fs, root = self._location()
        with fs.open(posixpath.join(root, face.source), "rb") as f:
            return f.read()

    def list(self) -> Listing:
        raise NotImplementedError


def is_image(rel: str) -> bool:
    return rel.lower().endswith(IMAGE_EXTENSIONS)


def _last(frames: list[str], n: int = 3) -> list[str]:
    return sorted(frames, key=lambda r: (_frame_number(posixpath.basename(r)), r))[-n:]


@register("ckplus")
class CKPlus(Adapter):
    """CK+ release: cohn-kanade-images/S005/001/*.png + Emotion/S005/001/*_emotion.txt; last 3 frames."""

    description = "CK+ release (cohn-kanade-images/ + Emotion/): last three frames of each labelled sequence"

    def list(self) -> Listing:
        out = Listing(CKPLUS_CLASSES)
        images = [r for r in self._files("cohn-kanade-images") if is_image(r)]
        by_seq: dict[tuple[str, str], list[str]] = {}
        for rel in images:
            parts = rel.split("/")
            if len(parts) != 4:
                out.rejects.append(Reject(rel, "not in cohn-kanade-images/<subject>/<sequence>/"))
                continue
            by_seq.setdefault((parts[1], parts[2]), []).append(rel)
        labels, bad = {}, set()  # (subject, sequence) → label; sequences whose label file was rejected
        for rel in self._files("Emotion"):
            parts = rel.split("/")
            if len(parts) != 4 or not rel.endswith("_emotion.txt"):
                continue
            try:
                code = int(float(self._read_text(rel).split()[0]))
            except (ValueError, IndexError, OverflowError):  # OverflowError: "inf"
                out.rejects.append(Reject(rel, "label file does not hold an emotion code"))
                bad.add((parts[1], parts[2]))
                continue
            if not 1 <= code <= len(CKPLUS_CLASSES):
                out.rejects.append(Reject(rel, f"unknown emotion code {code} (CK+ uses 1-7)"))
                bad.add((parts[1], parts[2]))
                continue
            labels[(parts[1], parts[2])] = code - 1
        unlabelled = 0
        for (subject, seq), frames in sorted(by_seq.items()):
            if (subject, seq) not in labels:
                unlabelled += (subject, seq) not in bad
                continue
            for rel in _last(frames):
                out.faces.append(
                    SourceFace(rel, subject, labels[(subject, seq)], seq, _frame_number(posixpath.basename(rel)))
                )
        for key in sorted(set(labels) - set(by_seq)):
            out.rejects.append(Reject(f"Emotion/{key[0]}/{key[1]}", "label file for a sequence with no images"))
        if unlabelled:
            out.notes.append(f"{unlabelled} sequences without an emotion label left out (as in the paper)")
        return out


_CK_NAME = re.compile(r"^(S\d+)_(\d+)_(\d+)\.\w+$", re.IGNORECASE)


@register("ckplus48")
class CKPlus48(Adapter):
    """CK+48: <expression>/S010_004_00000017.png, pre-cropped 48×48 faces."""

    description = "CK+48: <expression>/<S010_004_00000017>.png, pre-cropped faces"

    def list(self) -> Listing:
        out = Listing(CKPLUS_CLASSES)
        for rel in self._files():
            parts = rel.split("/")
            if len(parts) != 2:
                out.rejects.append(Reject(rel, "not in an <expression>/ folder"))
                continue
            name = canonical(parts[0], CKPLUS_CLASSES)
            if name is None:
                out.rejects.append(Reject(rel, f"unknown expression folder {parts[0]!r}"))
                continue
            if not is_image(rel):
                out.rejects.append(Reject(rel, "not an image file (by extension)"))
                continue
            m = _CK_NAME.match(parts[1])
            if not m:
                out.rejects.append(Reject(rel, "file name has no subject (expected S<subject>_<seq>_<frame>)"))
                continue
            out.faces.append(SourceFace(rel, m.group(1), CKPLUS_CLASSES.index(name), m.group(2), int(m.group(3))))
        return out


@register("oulu")
class OuluCASIA(Adapter):
    """Oulu-CASIA VIS, strong illumination: <root>/P001/Anger/000.jpeg; last three frames, six classes."""

    description = "Oulu-CASIA VIS strong illumination: <subject>/<Expression>/<frame>.jpeg, last three frames"

    def list(self) -> Listing:
        out = Listing(SIX_CLASSES)
        by_seq: dict[tuple[str, str], list[str]] = {}
        for rel in self._files():
            parts = rel.split("/")
            if len(parts) != 3:
                out.rejects.append(Reject(rel, "not in <subject>/<expression>/"))
                continue
            if canonical(parts[1], SIX_CLASSES) is None:
                out.rejects.append(Reject(rel, f"unknown expression folder {parts[1]!r}"))
                continue
            if not is_image(rel):
                out.rejects.append(Reject(rel, "not an image file (by extension)"))
                continue
            by_seq.setdefault((parts[0], parts[1]), []).append(rel)
        for (subject, expr), frames in sorted(by_seq.items()):
            label = SIX_CLASSES.index(canonical(expr, SIX_CLASSES))
            for rel in _last(frames):
                out.faces.append(SourceFace(rel, subject, label, expr, _frame_number(posixpath.basename(rel))))
        return out


def read_table(adapter: Adapter, rel: str) -> list[dict]:
    """Rows of a CSV or Parquet manifest as dicts of strings."""
    fs, root = adapter._location()
    path = posixpath.join(root, rel) if rel else root
    if not fs.isfile(path):
        raise SourceError(f"manifest {redact(path)!r} does not exist")
    if path.lower().endswith(".parquet"):
        import pyarrow.parquet as pq

        try:
            with fs.open(path, "rb") as f:
                rows = pq.read_table(f).to_pylist()
        except (ValueError, OSError) as e:  # pyarrow's ArrowInvalid is a ValueError
            raise SourceError(f"manifest {redact(path)!r} is not a readable Parquet file ({e})") from None
        return [{k: "" if v is None else str(v) for k, v in r.items()} for r in rows]
    with fs.open(path, "rb") as f:
        text = f.read().decode("utf-8-sig", errors="replace")
    return [{k.strip(): (v or "").strip() for k, v in r.items() if k} for r in csv.DictReader(io.StringIO(text))]


def require_columns(rows: list[dict], required: tuple[str, ...], where: str) -> None:
    if not rows:  # a header alone has no rows to show its columns by: say so, not "missing columns"
        raise SourceError(f"manifest {where}: no rows")
    missing = [c for c in required if c not in rows[0]]
    if missing:
        raise SourceError(f"manifest {where}: missing columns {missing}")


def safe_join(base: str, rel: str) -> str | None:
    """`rel` under `base` (both relative to the source root), or None if it escapes the root."""
    if rel.startswith("/") or re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", rel):  # a URI (s3://, file://, ...)
        return None
    joined = posixpath.normpath(posixpath.join(base, rel)) if base else posixpath.normpath(rel)
    return None if joined == ".." or joined.startswith("../") else joined


def _row_problem(row: dict, column: str, rel: str | None, label: int | None, what: str = "path") -> str | None:
    """Why a manifest row names no face: its `column` path (`rel`, from `safe_join`) leaves the source root,
    it has no subject, or its label is unknown; None for a usable row."""
    if rel is None:
        return f"{what} {row[column]!r} leaves the source root"
    if not row["subject"]:
        return "no subject"
    if label is None:
        return f"unknown label {row['label']!r}"
    return None


def parse_label(value: str, classes: tuple[str, ...], first_code: int) -> int | None:
    """A label given as a class name or as an integer code (codes start at `first_code`)."""
    name = canonical(value, classes)
    if name is not None:
        return classes.index(name)
    try:
        code = int(float(value))
    except (ValueError, OverflowError):  # OverflowError: "inf"
        return None
    return code - first_code if first_code <= code < first_code + len(classes) else None


@register("mmi")
class MMI(Adapter):
    """MMI sequences from a manifest (sequence, subject, label): the three middle frames, six classes."""

    description = "MMI: frame folders listed in a manifest (sequence, subject, label); three middle frames"

    def __init__(self, source: str | None, manifest: str = "manifest.csv"):
        super().__init__(source)
        self.manifest = manifest

    def list(self) -> Listing:
        out = Listing(SIX_CLASSES)
        self._require_dir(self.root)
        rows = read_table(self, self.manifest)
        require_columns(rows, ("sequence", "subject", "label"), self.manifest)
        for i, row in enumerate(rows, start=2):  # row numbers as a spreadsheet shows them (header = 1)
            where = f"{self.manifest} row {i}"
            seq = safe_join("", row["sequence"])
            label = parse_label(row["label"], SIX_CLASSES, first_code=1)  # MMI codes 1-6
            problem = _row_problem(row, "sequence", seq, label, "sequence path")
            if problem:
                out.rejects.append(Reject(where, problem))
            else:
                try:
                    frames = [r for r in self._files(seq) if is_image(r)]
                except SourceError:
                    out.rejects.append(Reject(where, f"sequence folder {seq!r} does not exist"))
                    continue
                if not frames:
                    out.rejects.append(Reject(where, f"sequence folder {seq!r} holds no images"))
                    continue
                frames = _last(frames, len(frames))  # sorted by frame number
                mid = len(frames) // 2
                for rel in frames[max(0, mid - 1) : mid + 2]:
                    out.faces.append(
                        SourceFace(rel, row["subject"], label, seq, _frame_number(posixpath.basename(rel)))
                    )
        return out


@register("folder")
class Folder(Adapter):
    """Generic <root>/<expression>/<file>; the subject comes from the file name by a regular expression."""

    description = "generic <expression>/<file> tree; --subject-regex takes the subject from the file name"

    def __init__(self, source: str | None, subject_regex: str = r"^([^_.]+)_", classes: str | None = None):
        super().__init__(source)
        self.pattern = re.compile(subject_regex)
        if self.pattern.groups < 1:
            raise SourceError(f"--subject-regex {subject_regex!r} needs a group that captures the subject")
        self.classes = tuple(c.strip().lower() for c in classes.split(",")) if classes else None

    def list(self) -> Listing:
        files = self._files()
        folders = sorted({r.split("/")[0].lower() for r in files if "/" in r})
        out = Listing(self.classes or tuple(folders))
        for rel in files:
            parts = rel.split("/")
            if len(parts) != 2:
                out.rejects.append(Reject(rel, "not in an <expression>/ folder"))
                continue
            name = parts[0].lower()
            if name not in out.classes:
                out.rejects.append(Reject(rel, f"unknown expression folder {parts[0]!r}"))
                continue
            if not is_image(rel):
                out.rejects.append(Reject(rel, "not an image file (by extension)"))
                continue
            m = self.pattern.search(parts[1])
            groups = m.groupdict() if m else {}
            subject = groups.get("subject") or (m.group(1) if m else None)
            if not subject:
                out.rejects.append(Reject(rel, f"file name has no subject (pattern {self.pattern.pattern!r})"))
                continue
            frame = int(groups["frame"]) if (groups.get("frame") or "").isdecimal() else _frame_number(parts[1])
            out.faces.append(SourceFace(rel, subject, out.classes.index(name), groups.get("sequence") or "", frame))
        return out


@register("manifest")
class Manifest(Adapter):
    """A CSV or Parquet file with path, subject, label (names or integers); paths relative to its folder."""

    description = "CSV/Parquet manifest with path, subject, label columns (optional sequence, frame)"

    def __init__(self, source: str | None, classes: str | None = None):
        super().__init__(source)
        self.classes = tuple(c.strip().lower() for c in classes.split(",")) if classes else None

    def _location(self):
        # The source is the manifest file; the root for image paths is its folder.
        if not hasattr(self, "_loc"):
            fs, path = open_location(self.source)
            self._loc = (fs, posixpath.dirname(path))
            self._manifest = posixpath.basename(path)
        return self._loc

    def list(self) -> Listing:
        self._location()
        rows = read_table(self, self._manifest)
        require_columns(rows, ("path", "subject", "label"), self._manifest)
        values = [r["label"] for r in rows if r["label"]]
        if self.classes:
            classes = self.classes
        elif values and all(re.fullmatch(r"-?\d+(\.0+)?", v) for v in values):
            classes = tuple(str(i) for i in range(int(max(float(v) for v in values)) + 1))
        else:
            classes = tuple(sorted({canonical(v, (v.lower(),)) or v.lower() for v in values}))
        out = Listing(classes)
        for i, row in enumerate(rows, start=2):
            where = f"{self._manifest} row {i}"
            rel = safe_join("", row["path"])
            label = parse_label(row["label"], classes, first_code=0)
            problem = _row_problem(row, "path", rel, label)
            if problem:
                out.rejects.append(Reject(where, problem))
            else:
                frame = row.get("frame", "")
                out.faces.append(
                    SourceFace(
                        rel, row["subject"], label, row.get("sequence", ""), int(frame) if frame.isdecimal() else -1
                    )
                )
        return out


@register("demo")
class Demo(Adapter):
    """Built-in faces drawn with Pillow: `subjects` × 7 expressions × 3 frames, deterministic by seed."""

    description = "built-in generated faces (no download): subjects × 7 expressions × 3 frames"
    needs_source = False

    def __init__(self, source: str | None = None, subjects: int = 12, seed: int = 0, size: int = 128):
        super().__init__(source)
        if subjects < 1:
            raise SourceError("the demo data set needs at least one subject")
        self.subjects, self.seed, self.size = subjects, seed, size

    def list(self) -> Listing:
        from fersnet_ray.prepare import demo

        out = Listing(tuple(demo.CLASSES))
        for s in range(self.subjects):
            for label, name in enumerate(demo.CLASSES):
                for frame in range(3):
                    subject = demo.subject_name(s)
                    out.faces.append(SourceFace(f"{subject}/{name}/{frame}.png", subject, label, name, frame))
        return out

    def read(self, face: SourceFace) -> bytes:
        import io

        from fersnet_ray.prepare import demo

        subject = int(face.subject[1:])  # "D007" → 7, as demo.subject_name(7)
        buf = io.BytesIO()
        # Uncompressed PNG (same pixels): these bytes are decoded once, right away, and never stored, so
        # zlib's work would be wasted (about a fifth of a drawn face's preparation).
        demo.render_face(self.seed, subject, face.label, face.frame, self.size).save(
            buf, format="PNG", compress_level=0
        )
        return buf.getvalue()
