"""Connecting to Ray (runtime.py): one meaning per address."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from fersnet_ray.cli import app
from fersnet_ray.runtime import init_ray, torch_threads

runner = CliRunner()


def test_a_dashboard_address_is_refused_by_stages_with_the_submit_command_named(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match=r"fersnet submit --address http://head:8265 STAGE"):
        init_ray("http://head:8265")
    # From the environment too (the README's `export RAY_ADDRESS=http://...` for submit and jobs), and
    # through the CLI as one error line, before anything runs.
    monkeypatch.setenv("RAY_ADDRESS", "https://head:8265")
    out = runner.invoke(app, ["prepare", "--store", str(tmp_path / "store")])
    assert out.exit_code == 1 and "Traceback" not in out.output
    assert out.output.startswith("error: https://head:8265 is a Ray dashboard (Jobs API) address")
    assert len(out.output.strip().splitlines()) == 1 and not (tmp_path / "store").exists()


def test_torch_threads_are_restored_after_the_block_even_when_it_fails(one_thread):
    import torch

    before = torch.get_num_threads()  # 1: conftest's session fixture, which restores the count the same way
    with torch_threads(2):
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError, match="boom"), torch_threads(3):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before


def test_rays_own_deprecation_warning_is_hidden_in_the_processes_ray_starts(monkeypatch):
    # Ray Train hands Ray Data's deprecated `exclude_resources` on by itself; the processes a local Ray starts
    # inherit PYTHONWARNINGS, which hides that warning and no other, and a second call adds nothing.
    import os
    import subprocess
    import sys

    from fersnet_ray.runtime import quiet_environment

    monkeypatch.setenv("PYTHONWARNINGS", "default::ResourceWarning")
    quiet_environment()
    quiet_environment()
    assert (
        os.environ["PYTHONWARNINGS"]
        == "default::ResourceWarning,ignore:`ExecutionOptions.exclude_resources` is deprecated"
    )
    code = (
        "import warnings\n"
        "warnings.warn('`ExecutionOptions.exclude_resources` is deprecated and will be removed', FutureWarning)\n"
        "warnings.warn('another warning', FutureWarning)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "exclude_resources" not in out.stderr and "another warning" in out.stderr


def test_a_local_rays_workers_carry_their_own_clusters_address(ray_local):
    """Ray Train's placement-group cleaner asks Ray's state API with no address, so Ray searches the
    machine; beside a second local Ray (under pytest-xdist the other worker's) that search failed in the
    worker and printed a traceback into the run's log. Workers of a local Ray started by `init_ray` carry
    their own address, so the search is never made."""

    @ray_local.remote
    def lookup() -> tuple[str | None, str]:
        import os

        from ray._private import services

        return os.environ.get("RAY_ADDRESS"), services.canonicalize_bootstrap_address_or_die(None)

    own = ray_local.get_runtime_context().gcs_address
    assert ray_local.get(lookup.remote()) == (own, own)
