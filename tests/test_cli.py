"""The CLI is thin: each option declared once, `run`/`ablation` cover the stages they chain, and what is
given on the command line reaches the stage's config (built in fersnet_ray/pipeline.py, not the CLI).

No Ray here: the CLI's Ray start and the stages' library calls are replaced by recorders, so these
checks look at the configs the library builds, in a second.
"""

from __future__ import annotations

import click
import pytest
import typer
from typer.testing import CliRunner

from fersnet_ray import cli, pipeline
from fersnet_ray.finetune.loop import FinetuneConfig
from fersnet_ray.pipeline import DEMO_FOLDS, DEMO_SUBJECTS, PipelineConfig

runner = CliRunner()
COMMANDS = typer.main.get_command(cli.app).commands
CHAINED = ("prepare", "train", "synthesize", "finetune", "report")

# A stage's option that `run` names otherwise (several stages have a --batch-size or --epochs).
RENAMED = {
    ("prepare", "actors"): "prepare_actors",
    ("prepare", "gpus_per_actor"): "prepare_gpus_per_actor",
    ("train", "folds"): "train_folds",
    ("synthesize", "batch_size"): "synth_batch_size",
    ("finetune", "epochs"): "finetune_epochs",
    ("finetune", "lr"): "finetune_lr",
    ("finetune", "lr_min"): "finetune_lr_min",
    ("finetune", "batch_size"): "finetune_batch_size",
}
# A stage's option `run` does not take, and why.
NOT_IN_RUN = {
    ("train", "dataset"): "the prepared data set is the one run prepares (--name, else the adapter)",
    **{(s, "run"): "run's --run names the run of every stage" for s in ("train", "synthesize", "finetune", "report")},
    ("synthesize", "folds"): "run's --train-folds: the folds trained are the folds synthesised",
    ("finetune", "folds"): "run's --train-folds: the folds trained are the folds fine-tuned",
    ("synthesize", "overwrite"): "run's --overwrite deletes the run, so every fold is synthesised again",
    ("finetune", "overwrite"): "run's --overwrite deletes the run, so every fold is fine-tuned again",
    ("finetune", "data"): "run fine-tunes on FES-DA; ablation adds the real-only control",
    ("finetune", "min_score"): "ablation's --finetune-min-score adds that row",
    ("finetune", "refill"): "ablation's --finetune-min-score row is refilled to FES-DA's steps, as the control is",
    ("finetune", "synthetic_weight"): "a variant of FES-DA: `fersnet finetune` adds its row to a run or ablation",
    ("finetune", "score_weighted"): "a variant of FES-DA: `fersnet finetune` adds its row to a run or ablation",
    ("finetune", "classifier"): "run fine-tunes FERSNet; ablation's --classifiers adds the others",
    ("finetune", "weights"): "only for --classifier other than fersnet (see ablation's --classifiers)",
}


def _options(command: str) -> dict[str, click.Option]:
    return {p.name: p for p in COMMANDS[command].params if isinstance(p, click.Option)}


@pytest.mark.parametrize("stage", CHAINED)
def test_run_and_ablation_take_every_option_of_the_stages_they_chain_with_the_same_help(stage):
    run = _options("run")
    assert [p.name for p in COMMANDS["ablation"].params] == [p.name for p in COMMANDS["run"].params]
    for name, opt in _options(stage).items():
        if (stage, name) in NOT_IN_RUN:
            continue
        theirs = RENAMED.get((stage, name), name)
        assert theirs in run, f"run lacks {stage}'s {opt.opts[0]}"
        assert run[theirs].help == opt.help, f"{stage} {opt.opts[0]} and run's help differ"
        if theirs == name:  # the same flags too (--cache/--stream, --quality/--no-quality, …)
            assert (run[name].opts, run[name].secondary_opts) == (opt.opts, opt.secondary_opts)
        assert run[theirs].envvar == opt.envvar


def test_no_two_commands_give_one_chained_option_two_helps():
    """Among the chained stages and run, a flag means one thing: one help text (or it is listed above)."""
    helps: dict[str, set[str]] = {}
    for command in (*CHAINED, "run"):
        for name, opt in _options(command).items():
            if (command, name) not in NOT_IN_RUN and (command, name) not in RENAMED:
                helps.setdefault(opt.opts[0], set()).add(opt.help)
    assert {flag: h for flag, h in helps.items() if len(h) > 1} == {}


@pytest.fixture
def built(monkeypatch):
    """Invokes `fersnet run …` and returns the PipelineConfig the library built (no Ray, no stage)."""
    seen = []
    monkeypatch.setattr("fersnet_ray.runtime.init_ray", lambda address=None: None)
    monkeypatch.setattr(pipeline, "run_pipeline", lambda cfg: seen.append(cfg) or {"report": "r"})
    monkeypatch.setattr(pipeline, "run_ablation", lambda cfg: seen.append(cfg) or {"report": "r"})
    monkeypatch.setattr(cli, "print_results", lambda store, run: None)

    def build(*args: str) -> PipelineConfig:
        out = runner.invoke(cli.app, list(args))
        assert out.exit_code == 0, out.output
        return seen.pop()

    return build


def test_run_options_reach_the_stage_configs(built, tmp_path):
    store = str(tmp_path / "st")
    cfg = built(
        "run", "--store", store, "--dataset", "ckplus", "--source", "/data/ck", "--align", "fan",
        "--weights", "s3://bucket/weights", "--prepare-actors", "3", "--synth-batch-size", "32", "--no-quality",
        "--max-rows", "999", "--max-failures", "5", "--finetune-lr-min", "1e-5", "--stream", "--resume",
        "--compare", "a,b", "--train-folds", "0,final", "--finetune-batch-size", "16", "--shuffle-buffer", "128",
    )  # fmt: skip
    assert (cfg.prepare.weights, cfg.prepare.align_method, cfg.prepare.actors) == ("s3://bucket/weights", "fan", 3)
    assert (cfg.synth.batch_size, cfg.synth.quality, cfg.synth.max_rows) == (32, False, 999)
    assert cfg.train.max_failures == cfg.finetune.max_failures == 5
    ft = FinetuneConfig(**cfg.finetune.config)
    assert (ft.lr, ft.lr_min, ft.cache, ft.batch_size, ft.shuffle_buffer) == (1e-4, 1e-5, False, 16, 128)
    assert (cfg.resume, cfg.overwrite, cfg.compare) == (True, False, ("a", "b"))
    assert cfg.train.folds == cfg.synth.folds == cfg.finetune.folds == (0, "final")
    assert {cfg.prepare.store, cfg.train.store, cfg.synth.store, cfg.finetune.store} == {store}
    assert cfg.run_name == cfg.train.run == cfg.synth.run == cfg.finetune.run == "ckplus"
    sets = ["--set", "train.lambda_rec=3", "--set", "model.fes_skips=false"]
    cfg = built("ablation", "--store", store, "--preset", "cpu48", *sets)
    assert cfg.experiment.overrides == ("train.lambda_rec=3", "model.fes_skips=false")
    exp = cfg.experiment.build({"classes": list("abcdefg"), "alignment": {"channels": 1}})
    assert (exp.train.lambda_rec, exp.model.fes_skips) == (3.0, False)
    cfg = built("run", "--store", store, "--overwrite", "--cache", "--quality")
    assert (cfg.overwrite, FinetuneConfig(**cfg.finetune.config).cache, cfg.synth.quality) == (True, True, True)


def test_defaults_are_the_librarys_the_demo_cpu_sized(built, tmp_path):
    store = str(tmp_path / "st")
    demo = built("run", "--store", store)
    assert demo == PipelineConfig.from_options(store=store)  # the CLI adds nothing of its own
    assert demo.prepare.folds == DEMO_FOLDS and demo.prepare.options == {"subjects": DEMO_SUBJECTS, "seed": 0}
    assert demo.experiment.preset == "tiny" and not demo.experiment.match_capacity
    ft = FinetuneConfig(**demo.finetune.config)
    assert (ft.epochs, ft.checkpoint_every, demo.synth.recognizer_epochs) == (3, 3, 30)
    paper = built("ablation", "--store", store, "--dataset", "ckplus48", "--source", "/d")
    assert (paper.prepare.folds, paper.experiment.preset, paper.experiment.match_capacity) == (10, "paper", True)
    ft = FinetuneConfig(**paper.finetune.config)
    assert (ft.epochs, ft.checkpoint_every, ft.lr, ft.lr_min) == (30, 5, 1e-4, 1e-6)
    # `prepare` builds its config with the same function as run's first stage.
    assert pipeline.prepare_config(store=store) == demo.prepare


def test_bad_values_fail_before_any_stage(built, tmp_path):
    for args, message in (
        (["--train-folds", "0,x"], "--folds '0,x'"),
        (["--classifiers", "nope"], "nope"),
        (["--finetune-lr", "1e-6", "--finetune-lr-min", "1e-3"], "lr_min"),
        (["--set", "train.lamda_rec=10"], "train has no setting 'lamda_rec'"),
    ):
        out = runner.invoke(cli.app, ["run", "--store", str(tmp_path / "st"), *args])
        assert out.exit_code == 1 and out.output.startswith("error: ") and message in out.output, out.output
    assert not (tmp_path / "st").exists()


def test_each_stage_gets_its_config_and_the_run_flags(monkeypatch, tmp_path):
    """run_pipeline hands each stage its nested config; train gets --resume/--overwrite, report --compare."""
    calls = {}
    card = {"classes": list("abcdefg"), "alignment": {"channels": 1}, "folds": 2, "num_faces": 1}

    class Prepared:
        def __init__(self, cfg):
            calls["prepare"] = cfg
            self.card = card

    def train(job, resume, overwrite):
        calls.setdefault("train", []).append((job, resume, overwrite))
        return {}

    monkeypatch.setattr("fersnet_ray.prepare.job.prepare", Prepared)
    monkeypatch.setattr("fersnet_ray.train.job.train", train)
    monkeypatch.setattr("fersnet_ray.synth.job.synthesize", lambda job: calls.setdefault("synth", job))
    monkeypatch.setattr("fersnet_ray.finetune.job.finetune", lambda job: calls.setdefault("finetune", job))
    monkeypatch.setattr(
        "fersnet_ray.report.job.write_report", lambda *a, **k: calls.setdefault("report", (a, k)) and "uri"
    )
    cfg = PipelineConfig.from_options(
        store=str(tmp_path), weights="w", max_failures=4, synth_batch_size=8, quality=False,
        finetune_lr_min=1e-7, cache=True, overwrite=True, compare="x", epochs=2,
    )  # fmt: skip
    pipeline.run_pipeline(cfg)
    assert calls["prepare"] is cfg.prepare and calls["prepare"].weights == "w"
    ((job, resume, overwrite),) = calls["train"]
    assert (job.max_failures, job.folds, resume, overwrite) == (4, (0, 1), False, True)
    assert job.experiment["train"]["epochs"] == 2 and job.experiment["model"]["num_classes"] == 7
    assert calls["synth"] is cfg.synth and (cfg.synth.batch_size, cfg.synth.quality) == (8, False)
    tuned = calls["finetune"]
    assert tuned.max_failures == 4 and (tuned.config["lr_min"], tuned.config["cache"]) == (1e-7, True)
    assert calls["report"] == ((str(tmp_path), "demo", ("x",)), {"if_changed": True})


def test_train_builds_its_experiment_like_run_does(tmp_path):
    """`fersnet train` and bench_train build the experiment from the card with the library's ExperimentSpec."""
    card = {"classes": list("abc"), "alignment": {"channels": 3}, "folds": 2}
    exp = pipeline.ExperimentSpec(preset="tiny", variant="fer_only", epochs=3).build(card)
    assert (exp.model.num_classes, exp.model.in_channels, exp.model.variant, exp.train.epochs) == (3, 3, "fer_only", 3)
    sets = ("train.lambda_rec=2", "model.cls_dropout=0.5")
    job = pipeline.ExperimentSpec(preset="tiny", overrides=sets).build(card).to_dict()
    assert (job["train"]["lambda_rec"], job["model"]["cls_dropout"]) == (2.0, 0.5)


def test_the_clis_variant_names_are_the_registrys():
    # `--variant` is checked against model.config.VARIANTS so a typo fails before torch is imported.
    from fersnet_ray.model import VARIANTS, list_models

    assert sorted(VARIANTS) == list_models()


def test_the_evaluation_line_names_what_was_fine_tuned(capsys):
    from dataclasses import asdict

    fold = {"accuracy": 0.9, "correct": 9, "total": 10, "confusion": [], "epochs": 1}
    experiment = {"model": {"variant": "fersnet"}}
    summary = {"run": "r", "config": {"experiment": experiment}, "folds": {"0": fold, "1": fold}}
    summary.update(mean_accuracy=0.9, std_accuracy=0.0, pooled_accuracy=0.9)
    cli.print_evaluation(summary)
    assert "r (fersnet): 90.00 ± 0.00% mean ± std over 2 folds; pooled 90.00%" in capsys.readouterr().out
    # a small CNN fine-tuned on rows scored ≥ 0.5 was printed as "(fersnet)"; one fold has no spread
    ft = asdict(FinetuneConfig(classifier="small-cnn", min_score=0.5))
    summary.update(config={"experiment": experiment, "finetune": ft}, folds={"0": fold})
    cli.print_evaluation(summary)
    assert "r (small-cnn+fes-da@0.5): 90.00% on one fold; pooled 90.00%" in capsys.readouterr().out
