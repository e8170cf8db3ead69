"""The GPU path (issue 10): the real loop on CUDA in each precision, with CUDA-graph capture,
and evaluation on the GPU agreeing with the CPU. Skipped without a GPU;
benchmarks/gpu_check.sh runs them (`pytest -m cuda`)."""

from __future__ import annotations

import pytest
import torch

from reslab.data import Preprocess, load_image_data, per_pixel_mean
from reslab.evaluate import evaluate_tensors
from reslab.models import create_model
from reslab.train.checkpoint import Checkpoint
from reslab.train.recipes import TrainConfig
from reslab.train.trainer import train

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.fixture(scope="module")
def data():
    return load_image_data("synthetic:512:128", progress=False)


@pytest.mark.parametrize("precision, graphs", [("fp32", False), ("bf16", False),
                                               ("bf16", True)])
def test_trains_on_cuda(tmp_path, data, precision, graphs):
    cfg = TrainConfig.cifar(model="resnet8", data="synthetic:512:128", iterations=40,
                            batch_size=64, eval_every=20, device="cuda", precision=precision,
                            compile=graphs, compile_mode="reduce-overhead", progress=False,
                            tensorboard=False, out=str(tmp_path / "run"))
    result = train(cfg, data)
    assert result.status == "finished" and result.iteration == 40
    assert result.last["test_error"] < 0.8  # 10 classes: chance is 0.9; it learns
    ckpt = Checkpoint.load(tmp_path / "run" / "last.pt")
    assert all(v.device.type == "cpu" for v in ckpt.model.values())


def test_same_seed_same_weights_on_cuda(tmp_path, data):
    def run(name):
        cfg = TrainConfig.cifar(model="resnet8", data="synthetic:512:128", iterations=6,
                                batch_size=64, eval_every=6, device="cuda", precision="fp32",
                                progress=False, tensorboard=False, out=str(tmp_path / name))
        train(cfg, data)
        return Checkpoint.load(tmp_path / name / "last.pt").model

    torch.backends.cudnn.deterministic = True
    a, b = run("a"), run("b")
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)


def test_evaluation_on_cuda_matches_cpu(data):
    model = create_model("resnet8").eval()
    pre = Preprocess(per_pixel_mean(data.train.images))
    cpu = evaluate_tensors(model, data.test.images, data.test.labels, pre, 64, "cpu")
    gpu = evaluate_tensors(model.cuda(), data.test.images, data.test.labels, pre, 64, "cuda")
    assert gpu.top1_error == pytest.approx(cpu.top1_error, abs=2 / len(data.test))
    assert gpu.loss == pytest.approx(cpu.loss, rel=1e-3)
