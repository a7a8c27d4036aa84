"""The Brevitas model zoo as a user meets it: build, calibrate, export (shared by the tests and
bench/bench_brevitas_zoo.py).

Every model comes from its own constructor in ``brevitas_examples`` with random weights
(no download). BatchNorm statistics are then moved by a few train-mode passes on random
inputs (cumulative averages, so they are the statistics of those passes), which also sets
the activation quantizers' runtime-statistics scales, and the model is exported with
``brevitas.export.export_qonnx`` like docs/brevitas.md says.
"""
from __future__ import annotations

import inspect
import warnings

import numpy as np

# name: (zoo, C, H, W). zoo "bnn": brevitas_examples.bnn_pynq.models (inputs in
# [0, 1], the models compute 2x - 1 themselves, except ResNet-18); "imagenet":
# brevitas_examples.imagenet_classification (normalized images, ~N(0, 1)).
# Exporter: "dynamo" (torch.onnx's default, what export_qonnx uses) or "torchscript"
# (export_qonnx(..., dynamo=False)). ResNet-18 4w4a exports only on the TorchScript route
# (the dynamo one fails inside Brevitas:
# "AssertionError: Perform add among QuantTensors"); the dynamo route was tried on TFC, CNV and
# ResNet-18 only. The tests use TorchScript (about 30x faster to run).
ZOO = {
    "tfc_1w1a": ("bnn", 1, 28, 28), "tfc_1w2a": ("bnn", 1, 28, 28), "tfc_2w2a": ("bnn", 1, 28, 28),
    "sfc_1w1a": ("bnn", 1, 28, 28), "sfc_1w2a": ("bnn", 1, 28, 28), "sfc_2w2a": ("bnn", 1, 28, 28),
    "lfc_1w1a": ("bnn", 1, 28, 28), "lfc_1w2a": ("bnn", 1, 28, 28),
    "cnv_1w1a": ("bnn", 3, 32, 32), "cnv_1w2a": ("bnn", 3, 32, 32), "cnv_2w2a": ("bnn", 3, 32, 32),
    "resnet18_4w4a": ("bnn", 3, 32, 32),
    "quant_mobilenet_v1_4b": ("imagenet", 3, 224, 224),
    "quant_mobilenet_v1": ("imagenet", 3, 224, 224),
    "quant_proxylessnas_mobile14_4b": ("imagenet", 3, 224, 224),
    "quant_proxylessnas_mobile14_4b5b": ("imagenet", 3, 224, 224),
    "quant_proxylessnas_mobile14_hadamard_4b": ("imagenet", 3, 224, 224),
    "quant_mobilenet_v1_4b_round_avgpool": ("imagenet", 3, 224, 224),
    "quant_proxylessnas_mobile14_4b_round_avgpool": ("imagenet", 3, 224, 224),
    # QuantVGG's classifier reads a 7x7 map after a 7x7, stride-1 TruncAvgPool: the features must
    # end at 13x13, so the zoo's VGGs run only on 416x416 inputs (224x224 fails in their forward)
    **{f"quant_vgg{d}{bn}": ("imagenet", 3, 416, 416) for d in (11, 13, 16, 19) for bn in ("", "_bn")},
}
TORCHSCRIPT_ONLY = {"resnet18_4w4a"}
# not run: Brevitas 0.13.4 fails in the hadamard model's own forward ("'bool' object has no
# attribute 'any'" in HadamardClassifier).
NOT_RUN = {"quant_proxylessnas_mobile14_hadamard_4b"}
# minutes per model on 2 cores (416x416, 8-bit, 133M+ weights): only when asked for by name
HEAVY = {name for name in ZOO if name.startswith("quant_vgg")}


def build(name):
    """The zoo model ``name`` with random weights (torch.nn.Module, train mode)."""
    import torch

    zoo = ZOO[name][0]
    if zoo == "bnn":
        import brevitas_examples.bnn_pynq.models as mod
    else:
        import brevitas_examples.imagenet_classification as mod
    fn = getattr(mod, name)
    params = inspect.signature(fn).parameters
    torch.manual_seed(0)
    if "pretrained" in params:
        return fn(pretrained=False)
    if "float_pretrained" in params:
        return fn(float_pretrained=False)
    return fn()


def inputs(name, n, seed=0):
    """n random float32 NCHW inputs of the kind the model expects."""
    zoo, c, h, w = ZOO[name]
    rng = np.random.default_rng(seed)
    if zoo == "bnn" and name != "resnet18_4w4a":
        return rng.uniform(0, 1, (n, c, h, w)).astype(np.float32)
    return rng.standard_normal((n, c, h, w)).astype(np.float32)


def calibrate(net, name, passes=3, batch=8):
    """Move BatchNorm statistics (and runtime-statistics activation scales) by ``passes``
    train-mode passes on random inputs; returns the net in eval mode."""
    import torch

    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None   # cumulative average of the passes' batch statistics
    net.train()
    with torch.no_grad():
        for p in range(passes):
            net(torch.from_numpy(inputs(name, batch, seed=100 + p)))
    return net.eval()


def export(name, path, dynamo=False, passes=3, batch=None):
    """Build, calibrate (``passes`` of ``batch`` inputs: 8, or 2 above 224x224) and export ``name``
    to ``path`` (QONNX). Returns the eval-mode net."""
    import torch
    from brevitas.export import export_qonnx

    torch.set_num_threads(1)
    net = calibrate(build(name), name, passes, batch or (8 if ZOO[name][2] <= 224 else 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_qonnx(net, torch.from_numpy(inputs(name, 1, seed=99)), str(path), dynamo=dynamo)
    return net


def torch_logits(net, x):
    import torch

    with torch.no_grad():
        y = net(torch.from_numpy(x))
    return (y.value if hasattr(y, "value") else y).numpy()
