"""hubconf.py: torch.hub lists every network of the zoo and loads them, with registry
weights, offline (a local clone, `source="local"`)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from published_weights import publish_tiny
from reslab import ReslabError, create_model, list_models
from reslab.models.weights import WEIGHTS_DIR_ENV

REPO = Path(__file__).resolve().parents[1]


def test_hub_lists_every_network_and_nothing_else(tmp_path, monkeypatch):
    # torch.hub.list has no source="local": it reads a GitHub repo's cached copy. A cached
    # copy that is this clone (and a trust list saying so) keeps it offline.
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))
    (tmp_path / "reslab_reslab_main").symlink_to(REPO, target_is_directory=True)
    entries = torch.hub.list("reslab/reslab:main", trust_repo=True, verbose=False)
    assert sorted(entries) == sorted(list_models())
    assert {"resnet20", "resnet1202", "plain110", "resnet152", "plain18"} <= set(entries)
    doc = torch.hub.help("reslab/reslab:main", "resnet56", trust_repo=True)
    assert "resnet56" in doc and "weights" in doc


@pytest.mark.parametrize("name", ["resnet20", "plain20", "resnet18"])
def test_hub_load_local_builds_the_network(name):
    model = torch.hub.load(str(REPO), name, source="local")
    assert model.reslab_spec == create_model(name).reslab_spec
    kw = torch.hub.load(str(REPO), name, source="local", num_classes=7)
    assert kw.fc.out_features == 7


def test_hub_load_local_with_registry_weights(tmp_path, monkeypatch):
    entry = publish_tiny(tmp_path, model="resnet20", name="synth-hub", iterations=2)
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(entry.folder))
    hub = torch.hub.load(str(REPO), "resnet20", source="local", weights="synth-hub")
    own = create_model("resnet20", weights="synth-hub")
    assert hub.reslab_weights == entry
    for k, v in own.state_dict().items():
        assert torch.equal(hub.state_dict()[k], v), k
    with pytest.raises(ReslabError, match="no weights synth-hub:plain20"):
        torch.hub.load(str(REPO), "plain20", source="local", weights="synth-hub")


def test_a_clone_loads_its_own_reslab(tmp_path):
    """hubconf puts the clone's src/ first: a clone works whether or not reslab is installed,
    and loads its own code, not an installed reslab's."""
    clone = tmp_path / "clone"
    shutil.copytree(REPO / "src", clone / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "hubconf.py", clone / "hubconf.py")
    code = ("import torch, sys; m = torch.hub.load(sys.argv[1], 'resnet32', source='local'); "
            "import reslab; print(m.reslab_spec.name, reslab.__file__)")
    out = subprocess.run([sys.executable, "-c", code, str(clone)], capture_output=True,
                         text=True, timeout=120, env={"OMP_NUM_THREADS": "1", "PATH": ""})
    assert out.returncode == 0, out.stderr
    name, where = out.stdout.split()
    assert name == "resnet32" and Path(where).is_relative_to(clone / "src")
