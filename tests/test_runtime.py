"""Connecting to Ray (runtime.py): one meaning per address."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from fersnet_ray.cli import app
from fersnet_ray.runtime import init_ray

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


def test_a_local_ray_is_the_one_rays_own_lookups_find(ray_local):
    """Ray's helpers that find "the" cluster without an address (Ray Train's placement-group cleaner) raise
    "Found multiple active Ray instances" when another Ray runs on the machine; the local Ray this process
    started is named in RAY_ADDRESS for them."""
    import os

    import ray
    from ray._private.services import canonicalize_bootstrap_address_or_die

    own = ray.get_runtime_context().gcs_address
    assert os.environ["RAY_ADDRESS"] == own
    assert canonicalize_bootstrap_address_or_die(None) == own
    init_ray()  # joins nothing else: Ray is up, a second call is a no-op
    assert ray.get_runtime_context().gcs_address == own
