"""Each data set adapter on a tree generated in its layout (no Ray: listing is plain Python)."""

from __future__ import annotations

import pandas as pd
import pytest

from builders import ckplus48_tree, ckplus_tree, face, oulu_tree, save
from fersnet_ray.prepare.sources import ADAPTERS, CKPLUS_CLASSES, SIX_CLASSES, SourceError, create_adapter


def reasons(listing) -> dict[str, str]:
    return {r.source: r.reason for r in listing.rejects}


def test_registry_lists_every_adapter():
    assert set(ADAPTERS) == {"ckplus", "ckplus48", "oulu", "mmi", "folder", "manifest", "demo"}
    assert all(cls.description for cls in ADAPTERS.values())
    with pytest.raises(SourceError, match="unknown data set adapter 'nope'"):
        create_adapter("nope", "x")


def test_ckplus_last_three_frames_of_labelled_sequences(tmp_path):
    listing = create_adapter("ckplus", str(ckplus_tree(tmp_path))).list()
    assert listing.classes == CKPLUS_CLASSES
    got = sorted((f.subject, f.sequence, f.frame, CKPLUS_CLASSES[f.label]) for f in listing.faces)
    assert got == [
        ("S005", "001", 3, "happy"),
        ("S005", "001", 4, "happy"),
        ("S005", "001", 5, "happy"),
        ("S010", "002", 1, "anger"),
        ("S010", "002", 2, "anger"),
        ("S010", "002", 3, "anger"),
    ]
    assert reasons(listing) == {
        "Emotion/S010/001/S010_001_00000003_emotion.txt": "unknown emotion code 9 (CK+ uses 1-7)"
    }
    assert listing.notes == ["1 sequences without an emotion label left out (as in the paper)"]


def test_ckplus48_names_and_rejects(tmp_path):
    root = ckplus48_tree(tmp_path, subjects=2)
    save(root / "boredom" / "S010_009_00000001.png", face())
    save(root / "happy" / "nosubject.png", face())
    save(root / "happy" / "README.txt", data=b"hello")
    listing = create_adapter("ckplus48", str(root)).list()
    assert len(listing.faces) == 2 * 3 * 3
    f = next(f for f in listing.faces if f.source == "anger/S010_001_00000002.png")
    assert (f.subject, f.sequence, f.frame, f.label) == ("S010", "001", 2, 0)
    assert reasons(listing) == {
        "boredom/S010_009_00000001.png": "unknown expression folder 'boredom'",
        "happy/nosubject.png": "file name has no subject (expected S<subject>_<seq>_<frame>)",
        "happy/README.txt": "not an image file (by extension)",
    }


def test_oulu_last_three_frames_six_classes(tmp_path):
    listing = create_adapter("oulu", str(oulu_tree(tmp_path))).list()
    assert listing.classes == SIX_CLASSES
    assert len(listing.faces) == 2 * 2 * 3
    assert {f.frame for f in listing.faces} == {2, 3, 4}
    assert {SIX_CLASSES[f.label] for f in listing.faces} == {"anger", "happy"}
    assert reasons(listing) == {"P002/Neutral/000.jpeg": "unknown expression folder 'Neutral'"}


def test_mmi_three_middle_frames_from_manifest(tmp_path):
    for seq, n in (("1830", 9), ("1831", 4)):
        for f in range(n):
            save(tmp_path / "Sessions" / seq / f"frame{f:03d}.png", face(0, 3, f % 3))
    pd.DataFrame(
        {
            "sequence": ["Sessions/1830", "Sessions/1831", "../../etc", "Sessions/1832", "Sessions/1830"],
            "subject": ["1", "2", "3", "4", ""],
            "label": ["happiness", "6", "anger", "fear", "anger"],
        }
    ).to_csv(tmp_path / "manifest.csv", index=False)
    listing = create_adapter("mmi", str(tmp_path)).list()
    by_seq = {}
    for f in listing.faces:
        by_seq.setdefault(f.sequence, []).append(f.frame)
    assert by_seq == {"Sessions/1830": [3, 4, 5], "Sessions/1831": [1, 2, 3]}
    labels = {f.sequence: SIX_CLASSES[f.label] for f in listing.faces}
    assert labels == {"Sessions/1830": "happy", "Sessions/1831": "surprise"}  # MMI code 6 = surprise
    assert reasons(listing) == {
        "manifest.csv row 4": "sequence path '../../etc' leaves the source root",
        "manifest.csv row 5": "sequence folder 'Sessions/1832' does not exist",
        "manifest.csv row 6": "no subject",
    }


def test_folder_adapter_subject_regex(tmp_path):
    for name in ("calm", "joy"):
        for s in ("alice", "bob"):
            save(tmp_path / name / f"{s}-take1.png", face())
    save(tmp_path / "joy" / "anonymous.png", face())
    listing = create_adapter("folder", str(tmp_path), subject_regex=r"^(?P<subject>[a-z]+)-").list()
    assert listing.classes == ("calm", "joy")
    assert sorted((f.subject, f.label) for f in listing.faces) == [("alice", 0), ("alice", 1), ("bob", 0), ("bob", 1)]
    assert list(reasons(listing).values()) == ["file name has no subject (pattern '^(?P<subject>[a-z]+)-')"]
    with pytest.raises(SourceError, match="needs a group"):
        create_adapter("folder", str(tmp_path), subject_regex="^x")


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_manifest_adapter(tmp_path, fmt):
    save(tmp_path / "img" / "a.png", face())
    save(tmp_path / "img" / "b.png", face())
    df = pd.DataFrame(
        {
            "path": ["img/a.png", "img/b.png", "../../etc/passwd", "/etc/passwd", "img/c.png"],
            "subject": ["s1", "s2", "s3", "s4", "s5"],
            "label": ["happy", "sadness", "happy", "happy", "grumpy"],
        }
    )
    manifest = tmp_path / f"faces.{fmt}"
    df.to_csv(manifest, index=False) if fmt == "csv" else df.to_parquet(manifest)
    listing = create_adapter("manifest", str(manifest), classes="happy,sadness").list()
    assert [(f.source, f.subject, f.label) for f in listing.faces] == [("img/a.png", "s1", 0), ("img/b.png", "s2", 1)]
    assert reasons(listing) == {
        f"faces.{fmt} row 4": "path '../../etc/passwd' leaves the source root",
        f"faces.{fmt} row 5": "path '/etc/passwd' leaves the source root",
        f"faces.{fmt} row 6": "unknown label 'grumpy'",
    }


def test_manifest_integer_labels_and_missing_columns(tmp_path):
    pd.DataFrame({"path": ["a.png", "b.png"], "subject": ["x", "y"], "label": [0, 2]}).to_csv(
        tmp_path / "m.csv", index=False
    )
    listing = create_adapter("manifest", str(tmp_path / "m.csv")).list()
    assert listing.classes == ("0", "1", "2") and [f.label for f in listing.faces] == [0, 2]
    pd.DataFrame({"file": ["a.png"], "label": [0]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(SourceError, match=r"manifest bad.csv: missing columns \['path', 'subject'\]"):
        create_adapter("manifest", str(tmp_path / "bad.csv")).list()


def test_missing_source_directory_is_a_clear_error(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        create_adapter("ckplus48", str(tmp_path / "nowhere")).list()
    with pytest.raises(SourceError, match="needs --source"):
        create_adapter("oulu", None)


def test_demo_listing_and_read_are_deterministic():
    a = create_adapter("demo", subjects=3)
    listing = a.list()
    assert len(listing.faces) == 3 * 7 * 3 and len({f.subject for f in listing.faces}) == 3
    first = listing.faces[0]
    assert a.read(first) == create_adapter("demo", subjects=3).read(first)
    assert a.read(first) != a.read(listing.faces[1])
