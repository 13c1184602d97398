"""The MRI reconstruction peer: deepinv's unrolled VarNet trained on medlens k-space files for a
fixed wall-clock budget on the CPU, then reconstructing the test files with their stored masks.

It runs in its own environment (deepinv needs torchvision, which cannot be imported beside
medlens's CPU torch):

    python3 -m venv .venv-peer
    .venv-peer/bin/pip install torch==2.14.1 torchvision==0.29.1 deepinv==0.5.0

and is called by ``benchmarks/reconstruction.py --peer-python .venv-peer/bin/python``, which
scores the images it writes with medlens's own fastMRI metrics. It imports nothing of medlens::

    _deepinv_peer.py --train DIR --test DIR [--test DIR ...] --out OUT --seconds BUDGET
                     [--accelerations 4 8] [--seed 0] [--cascades 6] [--channels 16 32 64]
    _deepinv_peer.py --self-check [--train DIR]

Data: medlens ``.npz`` files (``medlens simulate kspace``): FULL k-space ``(S, C, H, W)``, the
evaluation mask ``(W,)`` over phase-encode lines, coil maps ``(C, H, W)`` and the magnitude
``target``. deepinv's MRI physics already use medlens's (and fastMRI's) conventions, a centred
orthonormal 2D FFT over the last two axes, ``A x = M F (S x)``; only the layout is converted:
complex arrays become real ``(B, 2, [C,] H, W)`` (real, imaginary) and the mask ``(W,)`` is
broadcast to ``(B, 1, H, W)``. ``--self-check`` measures that ``physics.A`` and ``A_adjoint``
equal a NumPy FFT in medlens's convention (no k-space shift is needed).

Model: ``deepinv.models.VarNet(mode="varnet")``, image-domain cascades
``x <- x - w A^H (A x - y) - D(x)`` from ``x = A^H y``, whose one U-Net ``D`` (deepinv's, no
residual, no batch norm: ``D`` is the regulariser's gradient, which the cascade subtracts) is
shared by all cascades, as deepinv builds it; its widths are those of medlens's default cascade
(16, 32, 64: the same cost per cascade; 0.13 M parameters in all, as the cascades share them).
Single-coil files use ``deepinv.physics.MRI``, multi-coil ones ``MultiCoilMRI`` with the file's
maps. The U-Net's last convolution starts at zero (the one change to deepinv's defaults: the
untrained network then returns the zero-filled image, as medlens's does, rather than subtracting a
random regulariser). Inputs are scaled per slice by the maximum of the zero-filled image
``|A^H y|`` (so the network sees values near 1) and the output scaled back, so images are in the
target's scale. Training: each step draws a batch of slices of one shape (at most 2 x 256 x 256
pixels) and a NEW mask per slice as fastMRI's mask functions do (an acceleration from
``--accelerations``, centre fraction 0.32 / R; random lines, or equispaced from a random offset
where the file's mask kind is equispaced); Adam (lr 1e-3) on the L1 loss of the magnitudes, each
slice divided by its reference's maximum.

Output: ``OUT/<test folder>/<file stem>.npz`` with ``image`` ``(S, H, W)`` complex64 and
``seconds`` (the file's reconstruction time), and ``OUT/peer.json`` with the versions, the model,
``train_seconds``, ``steps`` and ``seconds_per_slice``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

PIXELS_PER_BATCH = 2 * 256 * 256
#: the U-Net widths of medlens's default cascade, so a step costs what a medlens step costs
CHANNELS = (16, 32, 64)


def load(path: Path) -> dict:
    """One k-space file's arrays (maps per slice ``(S, C, H, W)``) and meta."""
    with np.load(path, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    k = arrays["kspace"].astype(np.complex64)
    s, c, h, w = k.shape
    maps = arrays.get("maps")
    if maps is None:
        if c > 1:
            raise SystemExit(f"{path}: {c} coils and no coil maps")
        maps = np.ones((c, h, w), np.complex64)
    maps = np.broadcast_to(maps.astype(np.complex64), (s, c, h, w))
    meta = json.loads(str(arrays["meta"][()])) if "meta" in arrays else {}
    mask = arrays.get("mask")
    return {
        "path": path,
        "kspace": k,
        "maps": maps,
        "target": arrays.get("target"),
        "mask": np.ones(w, bool) if mask is None else mask.astype(bool),
        "single": c == 1 and bool(np.allclose(maps, 1)),
        "meta": meta,
    }


def fastmri_mask(width: int, accel: float, kind: str, rng: np.random.Generator) -> np.ndarray:
    """A ``(W,)`` mask as fastMRI's RandomMaskFunc / EquispacedMaskFractionFunc draw one."""
    low = max(1, round(width * 0.32 / accel))
    mask = np.zeros(width, bool)
    pad = (width - low + 1) // 2
    mask[pad : pad + low] = True
    if kind == "equispaced" and low * accel < width:
        adjusted = accel * (low - width) / (low * accel - width)
        start = int(rng.integers(0, max(1, round(adjusted))))
        mask[np.around(np.arange(start, width - 1, adjusted)).astype(np.int64)] = True
    else:
        prob = max(0.0, (width / accel - low) / (width - low)) if width > low else 0.0
        mask |= rng.uniform(size=width) < prob
    return mask


def to_real(k, single: bool):
    """Complex ``(B, C, H, W)`` to deepinv's real ``(B, 2, C, H, W)``, ``(B, 2, H, W)`` when
    single-coil (``C`` = 1)."""
    import torch

    k = torch.as_tensor(np.ascontiguousarray(k))
    y = torch.view_as_real(k).movedim(-1, 1).contiguous()
    return y[:, :, 0] if single else y


def physics_for(masks: np.ndarray, maps: np.ndarray, single: bool):
    """deepinv's physics for a batch: masks ``(B, W)``, maps ``(B, C, H, W)``."""
    import torch
    from deepinv.physics import MRI, MultiCoilMRI

    b, _, h, w = maps.shape
    mask = torch.from_numpy(np.asarray(masks, np.float32))[:, None, None, :].expand(b, 1, h, w)
    if single:
        return MRI(mask=mask.contiguous(), img_size=(b, 2, h, w))
    return MultiCoilMRI(mask=mask.contiguous(), coil_maps=torch.as_tensor(maps.copy()))


def measurements(kspace: np.ndarray, masks: np.ndarray, maps: np.ndarray, single: bool):
    """The undersampled measurements ``y`` (scaled), the physics and the per-slice scale (the
    zero-filled image's maximum)."""
    import torch

    physics = physics_for(masks, maps, single)
    y = to_real(kspace * masks[:, None, None, :], single)
    zero_filled = physics.A_adjoint(y)
    scale = zero_filled.pow(2).sum(1).sqrt().flatten(1).amax(1).clamp(min=1e-12)
    shape = (-1,) + (1,) * (y.ndim - 1)
    return y / scale.view(shape), physics, scale.to(torch.float32)


def magnitude(x):
    return (x.pow(2).sum(1) + 1e-12).sqrt()


def build_model(cascades: int, channels: tuple[int, ...]):
    from deepinv.models import UNet, VarNet
    from torch import nn

    denoiser = UNet(
        in_channels=2,
        out_channels=2,
        scales=len(channels),
        channels_per_scale=list(channels),
        residual=False,
        batch_norm=False,
    )
    # The last 1x1 convolution starts at zero, so the untrained network is gradient descent on
    # the data term (the zero-filled image) and not noise: from deepinv's initialisation the
    # first minutes of training only undo the random regulariser (medlens's starts at zero too).
    nn.init.zeros_(denoiser.Conv_1x1.weight)
    nn.init.zeros_(denoiser.Conv_1x1.bias)
    return VarNet(denoiser=denoiser, num_cascades=cascades, mode="varnet")


def fft2c(x: np.ndarray, inverse: bool = False) -> np.ndarray:
    """Centred orthonormal 2D FFT (medlens, fastMRI, sigpy) in NumPy float64, for the
    self-check: an implementation independent of deepinv's."""
    step = np.fft.ifft2 if inverse else np.fft.fft2
    x = np.fft.ifftshift(np.asarray(x, np.complex128), axes=(-2, -1))
    return np.fft.fftshift(step(x, axes=(-2, -1), norm="ortho"), axes=(-2, -1))


def self_check(train: list[Path]) -> int:
    """deepinv's ``A`` and ``A^H`` against the centred orthonormal FFT computed here, on odd and
    even sizes, single- and multi-coil; on a training file, ``|A^H y|`` of the full k-space
    against the target (differs by the simulated noise only)."""
    import torch

    rng = np.random.default_rng(0)
    worst = 0.0
    for (h, w), coils in (((13, 10), 1), ((12, 11), 1), ((13, 10), 3), ((16, 12), 4)):
        single = coils == 1
        x = (rng.normal(size=(2, h, w)) + 1j * rng.normal(size=(2, h, w))).astype(np.complex64)
        maps = rng.normal(size=(2, coils, h, w)) + 1j * rng.normal(size=(2, coils, h, w))
        maps = np.ones((2, 1, h, w)) if single else maps
        maps = maps.astype(np.complex64)
        masks = np.stack([fastmri_mask(w, 4, "random", rng) for _ in range(2)])
        m = masks[:, None, None, :]
        physics = physics_for(masks, maps, single)
        got = physics.A(to_real(x[:, None], True)).double()
        a = (got - to_real(fft2c(maps * x[:, None]) * m, single)).abs().max().item()
        unshifted = to_real(np.fft.fft2(maps * x[:, None], norm="ortho") * m, single)
        y = rng.normal(size=(2, coils, h, w)) + 1j * rng.normal(size=(2, coils, h, w))
        y = y.astype(np.complex64)
        back = (fft2c(y * m, inverse=True) * maps.conj()).sum(1)[:, None]
        b = (physics.A_adjoint(to_real(y, single)).double() - to_real(back, True)).abs().max()
        worst = max(worst, a, b.item())
        print(
            f"{h}x{w}, {coils} coil(s): |A x - M F(S x)| {a:.1e}, |A^H y - (A^H y)_ref| "
            f"{b.item():.1e}; an unshifted FFT would differ by "
            f"{(got - unshifted).abs().max().item():.1f}"
        )
        out = build_model(2, (8, 16))(got.float(), physics)
        assert out.shape == (2, 2, h, w), out.shape
    if train:
        data = load(sorted(train[0].rglob("*.npz"))[0])
        if data["target"] is not None:
            s = data["kspace"].shape[0]
            ones = np.ones((s, data["kspace"].shape[-1]), bool)
            physics = physics_for(ones, data["maps"], data["single"])
            image = magnitude(physics.A_adjoint(to_real(data["kspace"], data["single"])))
            target = torch.as_tensor(data["target"])
            error = ((image - target).norm() / target.norm()).item()
            print(
                f"{data['path'].name}: full-k-space |A^H y| against the target: "
                f"relative error {error:.4f} (the simulated noise)"
            )
    ok = worst < 1e-5
    print(f"self-check {'passed' if ok else 'FAILED'}: largest difference {worst:.2e} (< 1e-5)")
    return 0 if ok else 1


def training_groups(files: list[dict]) -> dict[tuple, list[tuple[int, int]]]:
    """(file, slice) pairs grouped by what a batch must share: shape, coils, single-coil."""
    groups: dict[tuple, list[tuple[int, int]]] = {}
    for i, data in enumerate(files):
        if data["target"] is None:
            raise SystemExit(f"{data['path']}: no target to train against")
        _, c, h, w = data["kspace"].shape
        for s in range(data["kspace"].shape[0]):
            groups.setdefault((h, w, c, data["single"]), []).append((i, s))
    return groups


def train(model, files: list[dict], args, rng: np.random.Generator) -> tuple[float, int, float]:
    """Adam on the scaled magnitude L1 loss until ``args.seconds`` have passed; the seconds,
    steps and the last mean loss."""
    import torch

    groups = training_groups(files)
    keys = list(groups)
    weights = np.array([len(groups[k]) for k in keys], float)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    started = last = time.perf_counter()
    steps, losses, mean = 0, [], float("nan")
    while time.perf_counter() - started < args.seconds:
        h, w, _, single = key = keys[rng.choice(len(keys), p=weights / weights.sum())]
        size = min(len(groups[key]), max(1, PIXELS_PER_BATCH // (h * w)))
        picked = [groups[key][j] for j in rng.choice(len(groups[key]), size, replace=False)]
        accels = rng.choice(args.accelerations, size)
        kinds = [files[i]["meta"].get("mask", "random") for i, _ in picked]
        masks = np.stack(
            [fastmri_mask(w, float(r), k, rng) for r, k in zip(accels, kinds, strict=True)]
        )
        kspace = np.stack([files[i]["kspace"][s] for i, s in picked])
        maps = np.stack([files[i]["maps"][s] for i, s in picked])
        target = torch.as_tensor(np.stack([files[i]["target"][s] for i, s in picked]))
        y, physics, scale = measurements(kspace, masks, maps, single)
        peak = target.flatten(1).amax(1).clamp(min=1e-12)[:, None, None]
        output = magnitude(model(y, physics)) * scale[:, None, None]
        loss = (output / peak - target / peak).abs().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        steps += 1
        losses.append(loss.item())
        if time.perf_counter() - last >= 30:
            last, mean = time.perf_counter(), float(np.mean(losses))
            print(f"step {steps}: L1 {mean:.4f} ({last - started:.0f} s)", flush=True)
            losses = []
    mean = float(np.mean(losses)) if losses else mean
    return time.perf_counter() - started, steps, mean


def reconstruct(model, data: dict) -> tuple[np.ndarray, float]:
    """Every slice of a file with its stored mask, in the target's scale; the seconds."""
    import torch

    s, _, h, w = data["kspace"].shape
    size = max(1, PIXELS_PER_BATCH // (h * w))
    images, seconds = [], 0.0
    with torch.no_grad():
        for start in range(0, s, size):
            part = slice(start, start + size)
            began = time.perf_counter()
            kspace, maps = data["kspace"][part], data["maps"][part]
            masks = np.tile(data["mask"], (kspace.shape[0], 1))
            y, physics, scale = measurements(kspace, masks, maps, data["single"])
            x = model(y, physics) * scale[:, None, None, None]
            images.append(torch.view_as_complex(x.movedim(1, -1).contiguous()).numpy())
            seconds += time.perf_counter() - began
    return np.concatenate(images).astype(np.complex64), seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--train",
        type=Path,
        action="append",
        default=[],
        help="A folder of k-space .npz files to train on (repeatable).",
    )
    parser.add_argument(
        "--test",
        type=Path,
        action="append",
        default=[],
        help="A folder of k-space .npz files to reconstruct (repeatable).",
    )
    parser.add_argument("--out", type=Path)
    parser.add_argument("--seconds", type=float, help="Training wall-clock budget.")
    parser.add_argument("--accelerations", type=float, nargs="+", default=[4.0, 8.0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cascades", type=int, default=6)
    parser.add_argument(
        "--channels",
        type=int,
        nargs="+",
        default=list(CHANNELS),
        help="The U-Net's feature maps per scale.",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--self-check",
        action="store_true",
        help="Check deepinv's MRI operators against the FFT convention; exit.",
    )
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args.self_check:
        return self_check(args.train)
    if not args.train or args.out is None or args.seconds is None:
        parser.error("--train, --out and --seconds are needed (or --self-check)")
    import deepinv

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    files = [load(p) for folder in args.train for p in sorted(folder.rglob("*.npz"))]
    if not files:
        raise SystemExit(f"no .npz files in {', '.join(map(str, args.train))}")
    model = build_model(args.cascades, tuple(args.channels))
    parameters = sum(p.numel() for p in model.parameters())  # the shared U-Net counted once
    slices = sum(f["kspace"].shape[0] for f in files)
    print(
        f"deepinv VarNet, {args.cascades} cascades, {parameters} parameters; "
        f"{len(files)} training files, {slices} slices",
        flush=True,
    )
    train_seconds, steps, loss = train(model, files, args, rng)
    print(f"trained {steps} steps in {train_seconds:.0f} s (last L1 {loss:.4f})", flush=True)
    model.eval()
    args.out.mkdir(parents=True, exist_ok=True)
    per_slice, written, warm = [], {}, False
    for folder in args.test:
        (args.out / folder.name).mkdir(parents=True, exist_ok=True)
        written[folder.name] = []
        for path in sorted(folder.rglob("*.npz")):
            data = load(path)
            if not warm:  # the first call pays for allocations: not timed
                reconstruct(model, {**data, "kspace": data["kspace"][:1]})
                warm = True
            image, seconds = reconstruct(model, data)
            per_slice += [seconds / image.shape[0]] * image.shape[0]
            np.savez(args.out / folder.name / f"{path.stem}.npz", image=image, seconds=seconds)
            written[folder.name].append(f"{path.stem}.npz")
    summary = {
        "deepinv": deepinv.__version__,
        "torch": torch.__version__,
        "model": {
            "name": "VarNet",
            "mode": "varnet",
            "cascades": args.cascades,
            "denoiser": f"deepinv UNet(scales={len(args.channels)}, channels_per_scale="
            f"{list(args.channels)}, residual=False, batch_norm=False), shared by the "
            "cascades",
            "parameters": parameters,
        },
        "normalisation": "measurements / max |A^H y| per slice; output times it",
        "accelerations": args.accelerations,
        "seed": args.seed,
        "threads": args.threads,
        "train_files": len(files),
        "train_slices": slices,
        "train_seconds": round(train_seconds, 1),
        "steps": steps,
        "last_loss": round(loss, 5),
        "seconds_per_slice": round(float(np.mean(per_slice)), 4) if per_slice else None,
        "tests": written,
    }
    (args.out / "peer.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
