"""MRI physics, masks, simulation and the unrolled network: cross-checked against fastMRI and
sigpy where they exist, with data consistency measured."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medlens.errors import DatasetError, MedlensError
from medlens.reconstruction.kspace import adjoint, fft2c, forward, ifft2c, rss, sense_combine
from medlens.reconstruction.masks import cartesian_mask, centre_lines


def _phantom(h: int = 48, w: int = 40, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    image = np.zeros((h, w))
    for _ in range(4):
        cy, cx, ry, rx = rng.uniform(8, h - 8), rng.uniform(8, w - 8), *rng.uniform(3, 10, 2)
        image[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] += rng.uniform(0.3, 1)
    phase = np.exp(1j * (yy / h - 0.5 * xx / w))
    return torch.from_numpy((image * phase).astype(np.complex64))


def test_fft_matches_fastmri_and_is_unitary():
    fastmri = pytest.importorskip("fastmri")
    x = torch.randn(3, 20, 18, dtype=torch.complex64)
    ours = fft2c(x)
    theirs = torch.view_as_complex(fastmri.fft2c(torch.view_as_real(x).contiguous()))
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert torch.allclose(ifft2c(ours), x, atol=1e-5)
    assert torch.allclose(ours.abs().pow(2).sum(), x.abs().pow(2).sum(), rtol=1e-5)


def test_fft_matches_sigpy():
    sp = pytest.importorskip("sigpy")
    x = np.random.default_rng(1).normal(size=(2, 16, 22)).astype(np.complex64)
    assert np.allclose(fft2c(torch.from_numpy(x)).numpy(), sp.fft(x, axes=(-2, -1)), atol=1e-5)


def test_adjoint_is_the_adjoint_of_forward():
    from medlens.reconstruction.coils import birdcage_maps

    pytest.importorskip("sigpy")
    gen = torch.Generator().manual_seed(0)
    maps = torch.from_numpy(birdcage_maps(4, (24, 20)))
    mask = torch.from_numpy(cartesian_mask(20, 4, seed=3)).float()
    x = torch.randn(24, 20, dtype=torch.complex64, generator=gen)
    y = torch.randn(4, 24, 20, dtype=torch.complex64, generator=gen)
    left = torch.vdot(forward(x, maps, mask).flatten(), y.flatten())
    right = torch.vdot(x.flatten(), adjoint(y, maps, mask).flatten())
    assert torch.allclose(left, right, rtol=1e-4)
    coils = ifft2c(forward(x, maps, None))
    assert torch.allclose(sense_combine(coils, maps), x, atol=1e-4)  # maps have rss 1
    assert torch.allclose(rss(coils), x.abs(), atol=1e-4)


@pytest.mark.parametrize("kind", ["random", "equispaced"])
@pytest.mark.parametrize(("width", "accel"), [(368, 4), (256, 8), (100, 4)])
def test_masks_equal_fastmris(kind, width, accel):
    subsample = pytest.importorskip("fastmri.data.subsample")
    cls = {"random": subsample.RandomMaskFunc, "equispaced": subsample.EquispacedMaskFractionFunc}
    for seed in (0, 7):
        ours = cartesian_mask(width, accel, kind, seed=seed)
        theirs = cls[kind]([0.32 / accel], [accel])((1, width, 1), seed=seed)[0]
        assert np.array_equal(ours, theirs.numpy().ravel() > 0)
    assert ours.sum() == pytest.approx(width / accel, rel=0.35)


def test_masks_refuse_an_empty_or_overfull_centre():
    with pytest.raises(MedlensError, match="leaves 1 centre line"):
        centre_lines(30, 8)
    with pytest.raises(MedlensError, match="nothing is left outside the centre"):
        cartesian_mask(64, 4, centre_fraction=0.3)
    with pytest.raises(MedlensError, match="above 1"):
        cartesian_mask(64, 1)
    with pytest.raises(MedlensError, match="use random or equispaced"):
        cartesian_mask(64, 4, "spiral")


def test_hard_data_consistency_is_exact_where_measured():
    """Single coil: the output's k-space equals the measurements on the mask; several coils:
    each coil's k-space after the last step does (what the output combines)."""
    from medlens.reconstruction.unrolled import UnrolledNet, consistent_coils

    torch.manual_seed(0)
    net = UnrolledNet(2, (4, 8)).eval()
    with torch.no_grad():  # weights away from the identity start
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = _phantom()[None]
    mask = torch.from_numpy(cartesian_mask(40, 4, seed=1)).float()[None]
    m = mask[:, None, None, :]
    for coils in (1, 4):
        if coils == 1:
            maps = torch.ones(1, 1, 48, 40, dtype=torch.complex64)
        else:
            from medlens.reconstruction.coils import birdcage_maps

            pytest.importorskip("sigpy")
            maps = torch.from_numpy(birdcage_maps(coils, (48, 40)))[None]
        k = forward(x, maps, None)
        k = (k + 0.05 * torch.randn_like(k)) * m
        with torch.no_grad():
            out = net({"kspace": k, "mask": mask, "maps": maps})
            per_coil = consistent_coils(out, k, mask, maps)
        assert torch.allclose(per_coil * m, k, atol=1e-5)
        if coils == 1:
            assert torch.allclose(fft2c(out[:, None]) * m, k, atol=1e-5)
        assert not torch.allclose(fft2c(out[:, None] * maps) * (1 - m), 0 * k)  # filled in


def _volumes(folder, n=3):
    from medlens.image import Image
    from medlens.io import save_image

    folder.mkdir(parents=True)
    for i in range(n):
        volume = np.stack([_phantom(40, 36, seed=10 * i + z).abs().numpy() for z in range(4)])
        save_image(Image(volume * 100, (0.8, 0.9, 2.5), (10.0, -5.0, 3.0)),
                   folder / f"case{i}.nii.gz")  # fmt: skip
    return folder


def test_simulated_kspace_is_named_simulated_and_consistent(tmp_path):
    from medlens.reconstruction.raw import read_kspace
    from medlens.reconstruction.simulate import simulate_kspace_dataset

    pytest.importorskip("sigpy")
    source = _volumes(tmp_path / "src")
    out = simulate_kspace_dataset(source, tmp_path / "k", coils=4, acceleration=4, seed=3,
                                  noise=0.0, progress=False)  # fmt: skip
    assert out["simulated"] and out["slices"] == 12
    assert json.loads((tmp_path / "k" / "dataset.json").read_text())["simulated"] is True
    assert "SIMULATED" in (tmp_path / "k" / "README.txt").read_text()
    data = read_kspace(tmp_path / "k" / "case0.npz")
    assert data.kspace.shape == (4, 4, 64, 64) and data.meta["simulated"] is True
    assert data.mask.sum() == pytest.approx(16, abs=8) and data.fully_sampled
    # noise-free: the coil images combine to the target exactly
    combined = sense_combine(ifft2c(torch.from_numpy(data.kspace)), torch.from_numpy(data.maps))
    assert np.allclose(combined.abs().numpy(), data.target, atol=1e-4)
    assert data.meta["padding"] == [12, 14]
    assert np.allclose(data.meta["spacing"], [0.8, 0.9, 2.5])
    again = simulate_kspace_dataset(source, tmp_path / "k2", coils=4, acceleration=4, seed=3,
                                    noise=0.0, progress=False)  # fmt: skip
    assert again["files"] == out["files"]
    assert np.array_equal(read_kspace(tmp_path / "k2" / "case0.npz").kspace, data.kspace)


def test_simulation_refuses_bad_settings(tmp_path):
    from medlens.reconstruction.simulate import simulate_kspace_dataset

    source = _volumes(tmp_path / "src", n=1)
    with pytest.raises(MedlensError, match="equispaced"):
        simulate_kspace_dataset(source, tmp_path / "a", mask="radial", progress=False)
    with pytest.raises(DatasetError, match=r"case0\.nii\.gz: .*centre line"):
        simulate_kspace_dataset(source, tmp_path / "b", acceleration=8, centre_fraction=0.01,
                                progress=False)  # fmt: skip
    assert not (tmp_path / "b").exists()  # nothing half-written
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "keep.txt").write_text("mine")
    with pytest.raises(MedlensError, match="not empty"):
        simulate_kspace_dataset(source, tmp_path / "c", progress=False)
    assert (tmp_path / "c" / "keep.txt").read_text() == "mine"


def test_cli_simulate_kspace(tmp_path, capsys):
    from medlens.cli.main import main

    source = _volumes(tmp_path / "src", n=2)
    code = main(["simulate", "kspace", str(source), "-o", str(tmp_path / "k"), "--accel", "4",
                 "--slices", "2"])  # fmt: skip
    assert code == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["slices"] == 4
    code = main(["simulate", "kspace", str(source), "-o", str(tmp_path / "k3"), "--accel", "8",
                 "--centre-fraction", "0.01"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1 and "centre line" in err


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from medlens.testing.tiny import train_tiny

    root = tmp_path_factory.mktemp("recon")
    return train_tiny("reconstruction", root)


def test_training_learns_beyond_zero_filled(tmp_path):
    """Forty steps on the phantoms: validation PSNR above the zero-filled reconstruction's."""
    from medlens.tasks.reconstruction.train import train_reconstruction
    from medlens.testing.tiny import kspace_phantoms

    data, settings = kspace_phantoms(tmp_path)
    settings = [s for s in settings if "batches_per_epoch" not in s]
    info = train_reconstruction(data, tmp_path / "run", epochs=2, progress=False,
                                overrides=[*settings, "train.batches_per_epoch=20",
                                           "train.lr=3e-3", "train.amp=off"],
                                log=lambda _: None)  # fmt: skip
    assert info["evaluation"]["psnr"] > info["evaluation"]["zero_filled_psnr"] + 0.5


def test_predict_writes_volumes_with_their_geometry(tiny_run, tmp_path):
    import medlens
    from medlens.io import load_image

    data, run = tiny_run
    predictor = medlens.load_predictor(run)
    summary = predictor.predict_path(data, tmp_path / "out")
    assert "4 file(s)" in summary
    image = load_image(tmp_path / "out" / "phantom_a.nii.gz")
    assert image.array.shape == (3, 40, 48)  # the simulation's padding cropped away
    assert np.allclose(image.spacing, (1.0, 1.0, 2.0))
    rows = (tmp_path / "out" / "reconstructions.csv").read_text().splitlines()
    assert rows[0] == "id,shape,seconds,psnr,ssim" and len(rows) == 5


def test_evaluate_scores_against_each_baseline_with_intervals(tiny_run, tmp_path):
    """Every baseline beside the network (compressed sensing with the weights the run chose on
    its validation files), paired gains that match the means, and a report showing them all."""
    import medlens
    from medlens.reconstruction.baselines import DEFAULT_GRID
    from medlens.tasks.registry import get_task

    data, run = tiny_run
    tuned = json.loads((run / "baselines.json").read_text())
    assert set(tuned["lamda"]) == {"cs_wavelet", "cs_tv"}
    for method, by_accel in tuned["lamda"].items():
        assert by_accel and all(v in DEFAULT_GRID for v in by_accel.values()), method
        table = tuned["psnr_by_lamda"][method]
        for accel, value in by_accel.items():  # the best of its table
            assert table[accel][f"{value:g}"] == max(table[accel].values())
    task = get_task("reconstruction")
    predictor = medlens.load_predictor(run)
    result = task.evaluate(predictor.run, data, split="all", n_boot=50, progress=False,
                           output=tmp_path / "eval")  # fmt: skip
    metrics = result.metrics
    assert metrics["n_files"] == 4 and metrics["simulated"] is True
    assert metrics["baselines"] == ["zero_filled", "cs_wavelet", "cs_tv"]  # single-coil: no SENSE
    assert metrics["baseline_weights"]["lamda"] == tuned["lamda"]
    psnr = metrics["metrics"]["psnr"]
    assert psnr["low"] <= psnr["mean"] <= psnr["high"]
    for name in metrics["baselines"]:
        gain = metrics[f"psnr_gain_vs_{name}"]["mean"]
        theirs = metrics["metrics"][f"{name}_psnr"]["mean"]
        assert gain == pytest.approx(psnr["mean"] - theirs, abs=1e-6)
        assert metrics["metrics"][f"{name}_seconds_per_slice"]["mean"] > 0
    # compressed sensing with a tuned weight beats leaving the lines empty on these phantoms
    zf = metrics["metrics"]["zero_filled_psnr"]["mean"]
    assert metrics["metrics"]["cs_tv_psnr"]["mean"] > zf + 1.0
    page = (tmp_path / "eval" / "report.html").read_text()
    assert "SIMULATED k-space" in page and "<img" in page
    assert all(label in page for label in ("zero-filled", "CS wavelet", "CS TV", "chosen on"))
    header = (tmp_path / "eval" / "per_file.csv").read_text().splitlines()[0].split(",")
    assert {"psnr", "zero_filled_psnr", "cs_tv_psnr", "cs_wavelet_ssim"} <= set(header)
    fewer = task.evaluate(predictor.run, data, split="all", n_boot=20, progress=False,
                          output=tmp_path / "eval2", baselines="zero_filled")  # fmt: skip
    assert fewer.metrics["baselines"] == ["zero_filled"]
    assert "psnr_gain_vs_cs_tv" not in fewer.metrics
    assert fewer.metrics["metrics"]["psnr"]["mean"] == pytest.approx(psnr["mean"])


def test_cli_evaluate_refuses_an_unknown_baseline(tiny_run, tmp_path, capsys):
    from medlens.cli.main import main

    data, run = tiny_run
    code = main(["evaluate", str(run), "--data", str(data), "--baselines", "zero_filled,grappa",
                 "--output", str(tmp_path / "e"), "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1
    assert "grappa" in err and "cs_tv" in err
    assert not (tmp_path / "e").exists()


def test_training_refuses_undersampled_only_kspace(tmp_path):
    from medlens.reconstruction.raw import read_kspace, write_kspace_npz
    from medlens.tasks.reconstruction.train import train_reconstruction
    from medlens.testing.tiny import kspace_phantoms

    data, settings = kspace_phantoms(tmp_path)
    for path in sorted(data.glob("*.npz")):
        k = read_kspace(path)
        k.kspace = k.undersampled()
        write_kspace_npz(path, k)
    with pytest.raises(DatasetError, match="measured on a mask only cannot train"):
        train_reconstruction(data, tmp_path / "run", epochs=1, overrides=settings,
                             progress=False, log=lambda _: None)  # fmt: skip


def test_espirit_maps_stand_in_for_missing_ones(tmp_path):
    """Multi-coil k-space without coil maps: ESPIRiT's estimate from the measured centre
    combines the coil images as the true maps do (up to a phase), and a run trains on it."""
    from medlens.reconstruction.coils import espirit_maps
    from medlens.reconstruction.raw import read_kspace, write_kspace_npz
    from medlens.reconstruction.simulate import simulate_kspace_dataset
    from medlens.tasks.reconstruction.train import train_reconstruction

    pytest.importorskip("sigpy")
    source = _volumes(tmp_path / "src", n=3)
    data = tmp_path / "k"
    simulate_kspace_dataset(source, data, coils=4, acceleration=4, noise=0.0, max_slices=2,
                            progress=False)  # fmt: skip
    first = read_kspace(data / "case0.npz")
    estimate = espirit_maps(first.undersampled()[0])
    true = first.maps
    inside = first.target[0] > 0.05 * first.target[0].max()
    coils = ifft2c(torch.from_numpy(first.kspace[0])).numpy()
    combined = np.abs((np.conj(estimate) * coils).sum(axis=0))
    assert np.abs(combined - first.target[0])[inside].mean() < 0.05 * first.target[0].max()
    assert np.allclose(np.abs(estimate)[:, inside], np.abs(true)[:, inside], atol=0.15)
    for path in sorted(data.glob("*.npz")):
        k = read_kspace(path)
        k.maps = None
        write_kspace_npz(path, k)
    info = train_reconstruction(data, tmp_path / "run", epochs=1, progress=False,
                                overrides=["network.cascades=1", "network.features=[4,8]",
                                           "train.batches_per_epoch=2", "val_slices=2"],
                                log=lambda _: None)  # fmt: skip
    assert info["status"] == "complete"
    assert json.loads((tmp_path / "run" / "plan.json").read_text())["maps"] == "espirit"
    tuned = json.loads((tmp_path / "run" / "baselines.json").read_text())["lamda"]
    assert set(tuned) == {"sense", "cs_wavelet", "cs_tv"}  # multi-coil: SENSE's penalty too
