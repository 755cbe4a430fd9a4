"""`fersnet export`: a run's classifier as files that run without fersnet-ray, each checked at export time.

    fersnet export --store URI --run NAME [--fold k|final] --format torchscript,safetensors,onnx --out DIR
    fersnet export --store URI --run NAME --classifier small-cnn --data real --format onnx --out DIR

Which model: `--fold k` or `--fold final`; by default the run's final model (every subject) when it
has finished, else the run's only fold (a run with several folds and no final model needs --fold).

What is written is the recognition path only (`use.recognizer.Recognizer`): input (N, C, S, S)
float32 in [-1, 1], output logits (N, E), float32 on CPU (no bf16: a checkpoint trained under bf16
autocast holds float32 weights; autocast is a run-time choice the user can make again). It is
FERSNet's (trained, or fine-tuned when that finished), or with `--classifier NAME` any classifier of
`finetune.classifiers` fine-tuned by `fersnet finetune --classifier NAME [--data real]`.

    DIR/model.torchscript.pt   torch.jit.trace of the Recognizer; `torch.jit.load` needs only PyTorch
    DIR/model.safetensors      the weights by the classifier's own names (FERSNet's for fersnet); the card
                               in its metadata; the architecture must be rebuilt (card: backbone.rebuild)
    DIR/model.onnx             torch.onnx export, batch dimension dynamic (dynamo; TorchScript classifiers:
                               the TorchScript-based exporter, which torch.export cannot replace); [onnx] extra
    DIR/fersnet-card.json      classes, channels, input size, the preprocessing steps, the backbone and how
                               to rebuild it, source run and checkpoint digest, training config, and the
                               check of every file

The check: every file is loaded back (TorchScript by torch.jit.load, safetensors into a fresh
Recognizer, ONNX by onnxruntime) and its logits on real faces of the face table (the fold's
held-out faces, preprocessed as `predict` does; the final model has none, so the table's first faces)
are compared with the PyTorch model's; a file whose logits differ by more than TOLERANCE is an error
and is removed. No Ray here: plain PyTorch.
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import os
import posixpath
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

import torch

from fersnet_ray.store import Store, open_location, redact
from fersnet_ray.foldkey import NO_HELD_OUT, Fold, held_out, is_final
from fersnet_ray.use.checkpoints import ModelRef, UseError, classifier_folds, final_model, resolve, run_config
from fersnet_ray.use.recognizer import Preprocessing, Recognizer, build_recognizer, load_recognizer

FORMATS = ("torchscript", "safetensors", "onnx")
FILES = {"torchscript": "model.torchscript.pt", "safetensors": "model.safetensors", "onnx": "model.onnx"}
CARD = "fersnet-card.json"
# |exported - PyTorch| <= ATOL + RTOL * |PyTorch|, elementwise on the logits, float32 on CPU. TorchScript runs
# the same kernels (differences ~0); ONNX Runtime's convolutions and GEMMs sum in another order (~1e-6).
ATOL, RTOL = 1e-4, 1e-4
ONNX_MODULES = ("onnx", "onnxscript", "onnxruntime")  # torch.onnx's dynamo exporter needs onnxscript


@dataclass(frozen=True)
class ExportJob:
    store: str
    run: str
    out: str  # a folder, path or s3://
    formats: tuple[str, ...] = ("torchscript",)
    fold: Fold | None = None  # None: the final model when finished, else the run's only fold (several: say which)
    checkpoint: str = "auto"  # auto (fine-tuned when finished, else trained) | finetune | train
    check_faces: int = 64  # face-table faces the exported files are checked on
    overwrite: bool = False
    classifier: str = "fersnet"  # which fine-tuning: `fersnet finetune --classifier`
    data: str = "real+synthetic"  # and its --data


def parse_formats(spec: str) -> tuple[str, ...]:
    formats = tuple(dict.fromkeys(f.strip().lower() for f in spec.split(",") if f.strip()))
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise UseError(f"--format {spec!r}: use one or more of {', '.join(FORMATS)} (comma-separated)")
    return formats


def require_dependencies(formats: tuple[str, ...]) -> None:
    """A format whose packages are missing is an error naming the extra that installs them."""
    if "onnx" in formats:
        missing = [m for m in ONNX_MODULES if not _importable(m)]
        if missing:
            raise UseError(
                f"--format onnx needs {', '.join(missing)}: install the extra with pip install 'fersnet-ray[onnx]'"
            )
    if "safetensors" in formats and not _importable("safetensors"):
        raise UseError("--format safetensors needs the safetensors package: pip install safetensors")


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


# --- writing and loading back each format (plain PyTorch) -------------------------------------------


def write_format(fmt: str, rec: Recognizer, example: torch.Tensor, path: str, card: dict) -> None:
    """Writes `rec` as `fmt` to a local `path`; `example` (B, C, S, S) is a real input for tracing."""
    if fmt == "torchscript":
        with torch.no_grad():
            traced = torch.jit.trace(rec, example, check_trace=False)  # the check below is stricter
        torch.jit.save(traced, path, _extra_files={CARD: json.dumps(card)})
    elif fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(rec.weights(), path, metadata={"fersnet_card": json.dumps(card)})
    elif fmt == "onnx" and rec.scripted:
        import warnings

        # torch.export (under the dynamo exporter) cannot take a ScriptModule; the TorchScript-based
        # exporter can. It is deprecated in favour of dynamo, and warns that a ScriptMethod has no Python
        # signature: neither concerns the user, so neither is shown.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)
            torch.onnx.export(
                torch.jit.trace(rec, example, check_trace=False),
                (example,),
                path,
                input_names=["images"],
                output_names=["logits"],
                dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                dynamo=False,
            )
    elif fmt == "onnx":
        import logging
        import warnings

        # The exporter logs a warning per torchvision op it cannot register (torchvision is not needed here)
        # and pytree deprecation notices; neither concerns this model.
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", category=FutureWarning, module="copyreg")
        batch = torch.export.Dim("batch", min=1)
        torch.onnx.export(
            rec,
            (example,),
            path,
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes={"images": {0: batch}},
            dynamo=True,
            external_data=False,  # one file: the tiny and paper models are far below protobuf's 2 GB
            verbose=False,
        )
    else:
        raise UseError(f"unknown export format {fmt!r}")


def run_exported(fmt: str, path: str, x: torch.Tensor, fresh: Callable[[], Recognizer]) -> torch.Tensor:
    """Loads an exported file back, as a user would, and returns its logits (N, E) for `x` (N, C, S, S).

    fresh: builds an untrained Recognizer of the architecture, for safetensors (which holds weights only).
    """
    if fmt == "torchscript":
        model = torch.jit.load(path, map_location="cpu").eval()
        with torch.no_grad():
            return model(x).float()
    if fmt == "safetensors":
        from safetensors.torch import load_file

        rec = fresh()
        rec.net.load_state_dict(load_file(path))  # strict: exactly the exported names
        with torch.no_grad():
            return rec.eval()(x).float()
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run(["logits"], {"images": x.numpy()})[0])
    raise UseError(f"unknown export format {fmt!r}")


def compare(reference: torch.Tensor, exported: torch.Tensor) -> dict:
    """How far the exported logits are from PyTorch's, and whether that is within the tolerance."""
    diff = (exported - reference).abs()
    bound = ATOL + RTOL * reference.abs()
    return {
        "faces": int(reference.shape[0]),
        "max_abs_logit_diff": float(diff.max()) if diff.numel() else 0.0,
        "tolerance": {"atol": ATOL, "rtol": RTOL, "rule": "|exported - pytorch| <= atol + rtol * |pytorch|"},
        "within_tolerance": bool((diff <= bound).all()),
        "same_argmax": float((exported.argmax(1) == reference.argmax(1)).float().mean()) if len(reference) else 1.0,
    }


def check_faces(store: Store, dataset: str, fold: Fold, prep: Preprocessing, n: int) -> torch.Tensor:
    """Up to `n` real faces of the face table as model input (N, C, S, S): the fold's held-out faces first
    (the final model has none: the table's first faces; the check compares logits, it measures no accuracy)."""
    import pyarrow.compute as pc

    from fersnet_ray.table import read_faces
    from fersnet_ray.train.data import decode_faces

    table = read_faces(store, dataset, columns=["image", "fold"])
    k = held_out(fold)
    rows = table.filter(pc.equal(table["fold"], k)) if k is not None else table
    rows = rows if rows.num_rows else table
    pngs = rows["image"].to_pylist()[:n]
    return prep.model_input(decode_faces(pngs, prep.load_size))


# --- the command -----------------------------------------------------------------------------------


def choose_fold(store: Store, job: ExportJob) -> ModelRef:
    """--fold's model; without it the final model when it has finished, else the classifier's only fold."""
    pick = {"stage": job.checkpoint, "classifier": job.classifier, "data": job.data}
    if job.fold is not None:
        return resolve(store, job.run, job.fold, **pick)
    final = final_model(store, job.run, **pick)
    if final is not None:
        return final
    folds = [f for f in classifier_folds(store, job.run, job.classifier, job.data) if not is_final(f)]
    if len(folds) != 1:
        have = ", ".join(map(str, folds)) or "none"
        which = "trained" if job.classifier == "fersnet" else f"{job.classifier}"
        raise UseError(
            f"run {job.run!r} has {which} folds {have} and no finished final model: pass --fold k to say which "
            f"one to export, or train the final model (`fersnet train --run {job.run} --folds final`)"
        )
    return resolve(store, job.run, folds[0], **pick)


def backbone(ref: ModelRef, exp, source: bytes | None) -> dict:
    """The card's `backbone`: which classifier, fine-tuned how, and how to rebuild it for the safetensors file."""
    import hashlib

    from fersnet_ray.finetune.classifiers import CLASSIFIERS, ClassifierInput, parse_classifier, rebuild_recipe

    key, _, arg = parse_classifier(ref.classifier)
    inp = ClassifierInput(exp.model.in_channels, exp.model.num_classes, exp.train.crop_size)
    card = {
        "classifier": ref.classifier,  # the --classifier name as fine-tuned (torchscript: the URI it read)
        "registry": key,  # the entry of fersnet_ray.finetune.classifiers.CLASSIFIERS
        "model": arg or None,  # timm's model name or the TorchScript URI
        "description": CLASSIFIERS[key].help,
        "fersnet_variant": exp.model.variant if ref.fersnet else None,
        "input": {"channels": inp.channels, "num_classes": inp.num_classes, "size": inp.size},
        "fine_tuned_on": ref.data if ref.stage == "finetune" else None,
        "rebuild": {
            **rebuild_recipe(ref.classifier, inp),
            "then": 'from safetensors.torch import load_file; model.load_state_dict(load_file("model.safetensors"))',
        },
    }
    if source is not None:
        card["source_sha256"] = hashlib.sha256(source).hexdigest()  # which TorchScript file this was
    return card


def finetune_config(store: Store, ref: ModelRef) -> dict | None:
    """The fine-tuning config of a fine-tuned checkpoint (its folder's config.json, two levels up), else None."""
    if ref.stage != "finetune":
        return None
    layout = store.run(ref.run)
    return store.read_json(layout.config(layout.stage_of(ref.path))).get("finetune")


def _evaluation_uri(store: Store, ref: ModelRef) -> str:
    """The evaluation.json beside the checkpoint: the held-out accuracy of its fold and stage."""
    layout = store.run(ref.run)
    return store.uri_of_path(layout.evaluation(ref.fold, layout.stage_of(ref.path)))


def export(job: ExportJob) -> dict:
    """Writes every requested format and the card into `job.out`, each checked; returns the card."""
    from fersnet_ray import __version__
    from fersnet_ray.table import read_card

    store = Store.from_uri(job.store)
    formats = tuple(job.formats)
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise UseError(f"--format {','.join(formats)!r}: use one or more of {', '.join(FORMATS)}")
    require_dependencies(formats)
    out_fs, out_dir = open_location(job.out)
    targets = [FILES[f] for f in formats] + [CARD]
    existing = [n for n in targets if out_fs.exists(posixpath.join(out_dir, n))]
    if existing and not job.overwrite:
        raise UseError(
            f"{redact(job.out)} already holds {', '.join(existing)}; pass --overwrite to replace "
            f"{'it' if len(existing) == 1 else 'them'}"
        )
    config = run_config(store, job.run)
    ref = choose_fold(store, job)
    rec, prep, exp = load_recognizer(store, ref)
    source = None  # a TorchScript classifier's file: its architecture, which safetensors does not hold
    if rec.scripted:
        from fersnet_ray.finetune.classifiers import TORCHSCRIPT, read_uri

        source = read_uri(ref.classifier[len(TORCHSCRIPT) :], "TorchScript model")
    fresh = lambda: build_recognizer(ref.classifier, exp, source)  # the architecture, untrained: for safetensors
    x = check_faces(store, config["dataset"], ref.fold, prep, job.check_faces)  # (N, C, S, S) in [-1, 1]
    with torch.no_grad():
        reference = rec(x).float()  # (N, E) float32 on CPU: what every exported file must reproduce

    card = {
        "classes": list(read_card(store, config["dataset"])["classes"]),
        "num_classes": exp.model.num_classes,
        "channels": prep.channels,
        "input_size": prep.crop_size,
        "input": f"images: (N, {prep.channels}, {prep.crop_size}, {prep.crop_size}) float32 in [-1, 1]",
        "output": f"logits: (N, {exp.model.num_classes}) float32; softmax gives the class probabilities",
        "preprocessing": prep.to_dict(),
        "source": {
            "store": store.uri,
            "run": job.run,
            "dataset": config["dataset"],
            "fold": ref.fold,
            "stage": ref.stage,
            "checkpoint": ref.uri,
            "sha256": ref.sha256,
            "epoch": ref.epoch,
        },
        # Where this model's accuracy on new subjects is measured: its fold's held-out faces (the evaluation
        # beside its checkpoint), or, for the final model (every subject, none held out), the run's folds.
        "held_out_accuracy": NO_HELD_OUT
        if is_final(ref.fold)
        else f"fold {ref.fold}'s held-out subjects: {_evaluation_uri(store, ref)}",
        "backbone": backbone(ref, exp, source),
        "experiment": exp.to_dict(),  # the run's: sizes, precision, and FERSNet's `model` (used by fersnet only)
        "finetune": finetune_config(store, ref),
        "variant": exp.model.variant if ref.fersnet else None,
        "fersnet_version": __version__,
        "torch_version": torch.__version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    card["files"], card["checks"] = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in formats:
            local = os.path.join(tmp, FILES[fmt])
            try:
                write_format(fmt, rec, x[: min(2, len(x))], local, card)
            except UseError:
                raise
            except Exception as e:  # noqa: BLE001 - an exporter failure names the format and the reason
                msg = (str(e).strip().splitlines() or [""])[0]
                raise UseError(f"--format {fmt}: export failed ({type(e).__name__}: {msg})") from None
            check = compare(reference, run_exported(fmt, local, x, fresh))
            if not check["within_tolerance"]:
                raise UseError(
                    f"--format {fmt}: the exported model's logits differ from PyTorch's by up to "
                    f"{check['max_abs_logit_diff']:.3g} on {check['faces']} faces (tolerance {ATOL} + {RTOL}·|logit|)"
                )
            card["files"][fmt] = FILES[fmt]
            card["checks"][fmt] = check
        if "file" in out_fs.protocol:
            out_fs.makedirs(out_dir, exist_ok=True)
        for fmt in formats:  # uploaded only once every format passed its check
            out_fs.put(os.path.join(tmp, FILES[fmt]), posixpath.join(out_dir, FILES[fmt]))
    with out_fs.open(posixpath.join(out_dir, CARD), "w") as f:
        f.write(json.dumps(card, indent=2) + "\n")
    return {**card, "out": job.out}
