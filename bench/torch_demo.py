"""The PyTorch peer: the demo job, and a VGG16 training step, as a PyTorch user would write them.

Standalone on purpose (it imports neither TensorFlow nor the project, so a process running it
pays only PyTorch's start-up); ``bench.torch_peer`` runs it beside ``run_train.py`` and times
both from start to exit.

``python bench/torch_demo.py demo DATA.npz [--epochs 20]``: ``run_train.py --preset demo``'s
job.  The same network (VGG16, no batch norm, every width x 0.25, 32 px, no dropout, conv
kernels He on fan-in, fc1/fc2 He on fan-in, predictions N(0, 0.01), all truncated normals as
Keras draws them), the same images (the demo's TFRecord shards decoded once into uint8 arrays
by ``bench.torch_peer``: the peer holds decoded arrays, as the issue's script did), the same
split and recipe: Nesterov SGD with momentum 0.9, label smoothing 0.1, weight decay 1e-4 on the
kernels only (the project's ``weight_decay * l2_loss``: the same gradient), gradients clipped to
a global norm of 5 (before SGD adds the decay term, as a PyTorch user writes it; the project
clips the gradient of the loss with its decay), lr 0.01 warmed up linearly over the first epoch then a per-step cosine to 0
over 20 epochs, batch 32, 44 steps an epoch (the images // 32), 20 epochs; the training
augmentation a random resized crop of area 0.6-1 and aspect 0.85-1.18, a horizontal flip and
ImageNet normalisation (torchvision v2 transforms, per image); evaluation after every 5th epoch
on the 360 validation images (shorter side to 37, central 32), saving the weights there.
channels_last, ``torch.set_num_threads(2)``.  Prints one JSON line.

``python bench/torch_demo.py vgg16 [--image_size 224 --batch_size 8 --warmup 2 --steps 12
--width 1.0 --classes 1000 --bf16]``: images/s of the training step of torchvision's VGG16 (SGD
Nesterov, cross-entropy) on one random batch, eager; ``--bf16`` under CPU autocast.  Prints one
JSON line.

``python bench/torch_demo.py matmul [--n 4096 --bf16]``: FLOP/s of an n x n by n x n matmul on
every core this process may use, PyTorch's practical peak for dense math on these cores (best
of 5).  Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

STARTED = time.perf_counter()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
KERAS_TRUNCATED = 0.87962566103423978  # Keras' truncated-normal stddev correction


def vgg16(width: float, image_size: int, classes: int) -> nn.Module:
    """VGG16 (torchvision's cfg D) with every width scaled, for ``image_size`` inputs."""

    def scaled(n: int) -> int:
        return max(1, int(round(n * width)))

    layers, channels = [], 3
    for v in VGG16:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, scaled(v), 3, padding=1), nn.ReLU(inplace=True)]
            channels = scaled(v)
    side = image_size // 32
    fc = scaled(4096)
    model = nn.Sequential(
        *layers,
        nn.Flatten(),
        nn.Linear(channels * side * side, fc),
        nn.ReLU(inplace=True),
        nn.Linear(fc, fc),
        nn.ReLU(inplace=True),
        nn.Linear(fc, classes),
    )
    head = model[-1]
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if m is head:
                nn.init.normal_(m.weight, 0.0, 0.01)
            else:
                std = math.sqrt(2.0 / m.weight[0].numel()) / KERAS_TRUNCATED
                nn.init.trunc_normal_(m.weight, 0.0, std, -2 * std, 2 * std)
            nn.init.zeros_(m.bias)
    return model


def demo(args) -> dict:
    from torchvision.transforms import v2

    torch.set_num_threads(2)
    torch.manual_seed(args.seed)
    data = np.load(args.data)
    # uint8 (N, H, W, 3) -> (N, 3, H, W) tensors, once
    train_x = torch.from_numpy(data["train_images"]).permute(0, 3, 1, 2).contiguous()
    train_y = torch.from_numpy(data["train_labels"].astype(np.int64))
    val_x = torch.from_numpy(data["val_images"]).permute(0, 3, 1, 2).contiguous()
    val_y = torch.from_numpy(data["val_labels"].astype(np.int64))
    size, batch = 32, 32
    augment = v2.Compose(
        [
            v2.RandomResizedCrop(size, scale=(0.6, 1.0), ratio=(0.85, 1.18), antialias=False),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(MEAN, STD),
        ]
    )
    evaluate_tf = v2.Compose(
        [
            v2.Resize(round(size * 256 / 224), antialias=False),
            v2.CenterCrop(size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(MEAN, STD),
        ]
    )

    class Images(torch.utils.data.Dataset):
        def __init__(self, x, y, transform):
            self.x, self.y, self.transform = x, y, transform

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            return self.transform(self.x[i]), self.y[i]

    train_loader = torch.utils.data.DataLoader(
        Images(train_x, train_y, augment), batch_size=batch, shuffle=True, drop_last=True
    )
    val_loader = torch.utils.data.DataLoader(Images(val_x, val_y, evaluate_tf), batch_size=batch)
    model = vgg16(0.25, size, 10).to(memory_format=torch.channels_last)
    kernels = [p for n, p in model.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    optimizer = torch.optim.SGD(
        [{"params": kernels, "weight_decay": 1e-4}, {"params": biases, "weight_decay": 0.0}],
        lr=0.01,
        momentum=0.9,
        nesterov=True,
    )
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    steps_per_epoch = len(train_x) // batch
    total, warmup = args.epochs * steps_per_epoch, steps_per_epoch

    def lr_at(step: int) -> float:
        if step < warmup:
            return 0.01 / warmup * (step + 1)
        return 0.01 * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))

    def evaluate() -> float:
        model.eval()
        hits = 0
        with torch.no_grad():
            for x, y in val_loader:
                logits = model(x.to(memory_format=torch.channels_last))
                hits += int((logits.argmax(1) == y).sum())
        model.train()
        return hits / len(val_x)

    first_step_at, evaluations, step = None, [], 0
    train_seconds = 0.0
    for epoch in range(1, args.epochs + 1):
        for x, y in train_loader:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
            t = time.perf_counter()
            loss = criterion(model(x.to(memory_format=torch.channels_last)), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            train_seconds += time.perf_counter() - t
            step += 1
            if first_step_at is None:
                first_step_at = time.perf_counter() - STARTED
        if epoch % 5 == 0 or epoch == args.epochs:
            top1 = evaluate()
            torch.save(model.state_dict(), args.save)
            evaluations.append({"epoch": epoch, "step": step, "top1": top1})
            print(f"epoch {epoch} step {step} top1 {top1:.4f}", file=sys.stderr, flush=True)
    return {
        "steps": step,
        "final_top1": evaluations[-1]["top1"],
        "evaluations": evaluations,
        "first_step_seconds": first_step_at,
        "train_images_per_second": step * batch / train_seconds if train_seconds else None,
        "seconds_in_process": time.perf_counter() - STARTED,
    }


def step_rate(args) -> dict:
    import torchvision

    torch.set_num_threads(2)
    if args.width == 1.0 and args.image_size == 224:
        model = torchvision.models.vgg16(num_classes=args.classes)
    else:
        model = vgg16(args.width, args.image_size, args.classes)
    model = model.to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, nesterov=True)
    criterion = nn.CrossEntropyLoss()
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    x = x.to(memory_format=torch.channels_last)
    y = torch.randint(0, args.classes, (args.batch_size,))

    def one_step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            loss = criterion(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(args.warmup):
        one_step()
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        one_step()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    images = args.steps * args.batch_size
    return {"images_per_second": images / wall, "images_per_cpu_second": images / cpu}


def matmul_rate(args) -> dict:
    torch.set_num_threads(len(os.sched_getaffinity(0)))  # every core TensorFlow's matmul gets
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    a, b = torch.randn(args.n, args.n, dtype=dtype), torch.randn(args.n, args.n, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return {"gflops": 2 * args.n**3 / best / 1e9}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="job", required=True)
    d = sub.add_parser("demo")
    d.add_argument("data")
    d.add_argument("--epochs", type=int, default=20)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--save", default="/dev/null")
    s = sub.add_parser("vgg16")
    s.add_argument("--image_size", type=int, default=224)
    s.add_argument("--batch_size", type=int, default=8)
    s.add_argument("--width", type=float, default=1.0)
    s.add_argument("--classes", type=int, default=1000)
    s.add_argument("--warmup", type=int, default=2)
    s.add_argument("--steps", type=int, default=12)
    s.add_argument("--bf16", action="store_true")
    m = sub.add_parser("matmul")
    m.add_argument("--n", type=int, default=4096)
    m.add_argument("--bf16", action="store_true")
    args = p.parse_args(argv)
    result = {"demo": demo, "vgg16": step_rate, "matmul": matmul_rate}[args.job](args)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
