#!/usr/bin/env python3
"""Train the Fashion-MNIST demo CNN: fp32, then W2A2 LSQ QAT from the fp32 weights.

Both runs use the same schedule: SGD (momentum 0.9, Nesterov), linear warm-up
then cosine decay per step, weight decay on conv/linear weights only, random
crop (pad 2) + horizontal flip. Outputs in --out-dir:

  fmnist_fp32.pt        state_dict of lowbit.models.fmnist_resnet(width)
  fmnist_w2a2_qat.pt    state_dict of lowbit.qat.prepare(fmnist_resnet(width),
                        w_bits, a_bits, first_last_bits)
  fmnist_train.json     test accuracies, command line, hyperparameters, timings

The committed checkpoints came from (one H200 GPU, ~2.5 min):
  python scripts/train_fmnist.py --device cuda --threads 2 --eval-every-epoch --width 32 --epochs 10
On one CPU core the defaults (width 32, 10 + 10 epochs) take ~2.6 h; a recipe
that fits ~25 min there (fp32 ~91.3%, W2A2 ~90.7%):
  python scripts/train_fmnist.py --width 16 --epochs 5
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

try:
    import lowbit.qat  # noqa: F401  (installed package)
except ImportError:  # running from a source checkout without `pip install .`
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
from lowbit import datasets, models, qat  # noqa: E402

try:
    from tqdm import tqdm as _tqdm
except ImportError:
    _tqdm = None


class _Progress:
    """Minimal progress bar on stderr (used when tqdm is not installed)."""

    def __init__(self, total: int, desc: str):
        self.total, self.desc, self.n, self.t0, self.post = total, desc, 0, time.time(), ""
        self._last = 0.0

    def set_postfix_str(self, s: str) -> None:
        self.post = s

    def update(self, k: int = 1) -> None:
        self.n += k
        now = time.time()
        if now - self._last >= 0.5 or self.n == self.total:
            self._last = now
            el = now - self.t0
            eta = el / self.n * (self.total - self.n) if self.n else 0.0
            filled = int(30 * self.n / self.total)
            sys.stderr.write(f"\r{self.desc} [{'#' * filled}{'.' * (30 - filled)}] "
                             f"{self.n}/{self.total} {el:5.0f}s<{eta:4.0f}s {self.post}")
            sys.stderr.flush()

    def close(self) -> None:
        sys.stderr.write("\n")
        sys.stderr.flush()


def progress(total: int, desc: str, enabled: bool):
    """tqdm bar if installed, else _Progress; a no-op bar when disabled."""
    if not enabled:
        return _Null()
    if _tqdm is not None:
        return _tqdm(total=total, desc=desc, leave=True, dynamic_ncols=True)
    return _Progress(total, desc)


class _Null:
    def set_postfix_str(self, s): pass
    def update(self, k=1): pass
    def close(self): pass


def augment(x: torch.Tensor, pad_value: float, gen: torch.Generator) -> torch.Tensor:
    """Random crop 28x28 from the image padded by 2 (background value) + random h-flip."""
    b, _, h, w = x.shape
    dev = x.device
    xp = F.pad(x, (2, 2, 2, 2), value=pad_value)
    dy = torch.randint(0, 5, (b,), generator=gen).to(dev)
    dx = torch.randint(0, 5, (b,), generator=gen).to(dev)
    rows = (dy[:, None] + torch.arange(h, device=dev))[:, :, None]
    cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, :]
    out = xp[torch.arange(b, device=dev)[:, None, None], 0, rows, cols][:, None]
    flip = (torch.rand(b, generator=gen) < 0.5).to(dev)[:, None, None, None]
    return torch.where(flip, out.flip(-1), out)


def param_groups(model: nn.Module, weight_decay: float):
    """Weight decay on conv/linear weights only (not BN, biases or LSQ steps)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_weight = name.endswith("weight") and p.dim() > 1
        (decay if is_weight else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1.0 + math.cos(math.pi * t))


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bs: int, fmt) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), bs):
        logits = model(fmt(x[i:i + bs]))
        correct += int((logits.argmax(1) == y[i:i + bs]).sum())
    return correct / len(x)


def train(model, data, args, lr, epochs, desc, device, fmt, seed):
    xtr, ytr, xte, yte = data
    n = len(xtr)
    steps_per_epoch = n // args.batch_size
    total = steps_per_epoch * epochs
    warmup = max(1, int(args.warmup * total))
    opt = torch.optim.SGD(param_groups(model, args.weight_decay), lr=lr, momentum=0.9,
                          nesterov=True)
    gen = torch.Generator().manual_seed(seed)
    pad_value = (0.0 - datasets.FMNIST_MEAN) / datasets.FMNIST_STD
    history = []
    step = 0
    bar = progress(total, desc, not args.no_progress)
    t0 = time.time()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=gen).to(device)
        run_loss, run_acc = 0.0, 0.0
        for i in range(steps_per_epoch):
            idx = perm[i * args.batch_size:(i + 1) * args.batch_size]
            xb = fmt(augment(xtr[idx], pad_value, gen))
            yb = ytr[idx]
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total, lr, warmup)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            li = loss.item()
            run_loss = 0.98 * run_loss + 0.02 * li if i else li
            acc = float((logits.argmax(1) == yb).float().mean())
            run_acc = 0.98 * run_acc + 0.02 * acc if i else acc
            bar.set_postfix_str(f"ep {epoch + 1}/{epochs} loss {run_loss:.3f} acc {run_acc:.3f}")
            bar.update(1)
        entry = {"epoch": epoch + 1, "train_loss": round(run_loss, 4),
                 "seconds": round(time.time() - t0, 1)}
        if args.eval_every_epoch or epoch == epochs - 1:
            entry["test_acc"] = evaluate(model, xte, yte, 1000, fmt)
        history.append(entry)
        if "test_acc" in entry:
            bar.set_postfix_str(f"ep {epoch + 1}/{epochs} test acc {entry['test_acc']:.4f}")
            bar.update(0)
    bar.close()
    return history, time.time() - t0


def main(argv=None):
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=10, help="epochs for fp32 and (by default) QAT")
    p.add_argument("--qat-epochs", type=int, default=None, help="QAT epochs (default: --epochs)")
    p.add_argument("--width", type=int, default=32, help="fmnist_resnet width")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1, help="peak SGD learning rate (fp32)")
    p.add_argument("--qat-lr", type=float, default=None, help="peak QAT learning rate (default: --lr)")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--warmup", type=float, default=0.03, help="warm-up fraction of the steps")
    p.add_argument("--w-bits", type=int, default=2)
    p.add_argument("--a-bits", type=int, default=2)
    p.add_argument("--first-last-bits", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--limit-train", type=int, default=0, help="use only the first N training images")
    p.add_argument("--fp32-checkpoint", default=None,
                   help="skip fp32 training and start QAT from this state_dict")
    p.add_argument("--out-dir", default=os.path.join(here, "..", "python", "lowbit", "data"))
    p.add_argument("--prefix", default="fmnist")
    p.add_argument("--eval-every-epoch", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    qat_epochs = args.qat_epochs if args.qat_epochs is not None else args.epochs
    qat_lr = args.qat_lr if args.qat_lr is not None else args.lr

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    device = torch.device(args.device)
    channels_last = device.type == "cpu"
    fmt = (lambda t: t.contiguous(memory_format=torch.channels_last)) if channels_last else (lambda t: t)

    xtr_u8, ytr_np = datasets.load_fashion_mnist("train")
    xte_u8, yte_np = datasets.load_fashion_mnist("test")
    if args.limit_train:
        xtr_u8, ytr_np = xtr_u8[:args.limit_train], ytr_np[:args.limit_train]
    data = (torch.from_numpy(datasets.normalize(xtr_u8)).to(device),
            torch.from_numpy(ytr_np).to(device),
            torch.from_numpy(datasets.normalize(xte_u8)).to(device),
            torch.from_numpy(yte_np).to(device))
    os.makedirs(args.out_dir, exist_ok=True)
    fp32_path = os.path.join(args.out_dir, f"{args.prefix}_fp32.pt")
    qat_path = os.path.join(args.out_dir, f"{args.prefix}_w{args.w_bits}a{args.a_bits}_qat.pt")
    t_start = time.time()

    model = models.fmnist_resnet(args.width).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if args.fp32_checkpoint:
        model.load_state_dict(torch.load(args.fp32_checkpoint, map_location=device, weights_only=True))
        fp32_hist, fp32_time = [{"test_acc": evaluate(model, data[2], data[3], 1000, fmt)}], 0.0
    else:
        fp32_hist, fp32_time = train(model, data, args, args.lr, args.epochs, "fp32",
                                     device, fmt, args.seed)
        torch.save({k: v.cpu() for k, v in model.state_dict().items()}, fp32_path)
    fp32_acc = fp32_hist[-1]["test_acc"]
    print(f"fp32 test accuracy: {fp32_acc:.4f} ({fp32_time:.0f}s)", flush=True)

    qmodel = qat.prepare(model, w_bits=args.w_bits, a_bits=args.a_bits,
                         first_last_bits=args.first_last_bits)
    q_hist, q_time = train(qmodel, data, args, qat_lr, qat_epochs,
                           f"W{args.w_bits}A{args.a_bits} QAT", device, fmt, args.seed + 1)
    torch.save({k: v.cpu() for k, v in qmodel.state_dict().items()}, qat_path)
    q_acc = q_hist[-1]["test_acc"]
    print(f"W{args.w_bits}A{args.a_bits} QAT (fake-quant) test accuracy: {q_acc:.4f} "
          f"({q_time:.0f}s); fp32 - QAT = {100 * (fp32_acc - q_acc):.2f} points", flush=True)

    repo = os.path.abspath(os.path.join(here, ".."))
    cmd = "python " + " ".join(shlex.quote(a) for a in
                               [os.path.relpath(os.path.abspath(__file__), repo)] + sys.argv[1:])
    info = {
        "command": cmd,
        "model": f"lowbit.models.fmnist_resnet(width={args.width})",
        "qat_prepare": {"w_bits": args.w_bits, "a_bits": args.a_bits,
                        "first_last_bits": args.first_last_bits, "per_channel": True},
        "hyperparameters": {k: v for k, v in vars(args).items() if k not in ("out_dir", "no_progress")}
        | {"qat_epochs": qat_epochs, "qat_lr": qat_lr, "optimizer": "SGD momentum 0.9 nesterov",
           "schedule": "linear warm-up then cosine per step",
           "augmentation": "random crop (pad 2) + horizontal flip",
           "normalization": {"mean": datasets.FMNIST_MEAN, "std": datasets.FMNIST_STD}},
        "fp32": {"file": os.path.basename(fp32_path), "test_acc": fp32_acc,
                 "train_seconds": round(fp32_time, 1), "history": fp32_hist},
        "qat": {"file": os.path.basename(qat_path), "test_acc": q_acc,
                "train_seconds": round(q_time, 1), "history": q_hist},
        "total_seconds": round(time.time() - t_start, 1),
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "device": str(device), "threads": args.threads,
                        "cpu": platform.processor() or platform.machine(),
                        "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None},
    }
    json_path = os.path.join(args.out_dir, f"{args.prefix}_train.json")
    with open(json_path, "w") as f:
        json.dump(info, f, indent=2)
    print(f"saved {fp32_path}, {qat_path}, {json_path}")


if __name__ == "__main__":
    main()
