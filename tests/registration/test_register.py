"""Registration by instance optimisation: kernels, recovery of known transforms, ITK files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medlens.errors import MedlensError
from medlens.image import Image
from medlens.metrics.registration import folding_fraction, jacobian_determinant, sdlogj
from medlens.registration.fields import compose, integrate
from medlens.registration.register import Registration, register
from medlens.registration.similarity import SIMILARITIES, lncc, mi
from medlens.registration.transform_io import (
    read_affine,
    read_displacement,
    write_affine,
    write_displacement,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def blobs(shape, seed=0, count=6, texture=0.15):
    """Smooth random blobs ``shape`` (array order) in [0, 1] over a fine smooth texture (so
    local statistics are defined everywhere, as in real images)."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij")
    out = np.zeros(shape)
    for _ in range(count):
        centre = [rng.uniform(0.3 * s, 0.7 * s) for s in shape]
        width = rng.uniform(0.08, 0.16) * min(shape)
        out += np.exp(-sum((g - c) ** 2 for g, c in zip(grids, centre, strict=True)) / width**2)
    if texture:
        from scipy.ndimage import gaussian_filter

        fine = gaussian_filter(rng.normal(size=shape), 1.5)
        out = out / out.max() + texture * fine / np.abs(fine).max()
    return ((out - out.min()) / (out.max() - out.min())).astype(np.float32)


def smooth_field(shape, amplitude, seed=0):
    """A smooth velocity ``(1, n, *shape)`` in voxels, at most ``amplitude`` voxels."""
    n = len(shape)
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.normal(size=(1, n, *[4] * n)).astype(np.float32))
    mode = ("linear", "bilinear", "trilinear")[n - 1]
    field = torch.nn.functional.interpolate(coarse, size=shape, mode=mode, align_corners=True)
    return field / field.abs().max() * amplitude


def test_similarities_are_lowest_at_alignment():
    image = torch.from_numpy(blobs((40, 48)))[None, None]
    remapped = 1 - image**2  # another "modality": a monotone-free remapping of intensities
    for name, fn in SIMILARITIES.items():
        other = remapped if name in ("mi", "mind") else image * 2 + 1 if name != "mse" else image
        at = float(fn(image, other))
        for shift in (2, 4):
            moved = torch.roll(other, shift, dims=-1)
            assert float(fn(image, moved)) > at, (name, shift)


def test_mi_is_high_for_an_image_with_itself_and_near_zero_with_noise():
    from sklearn.metrics import mutual_info_score

    image = torch.from_numpy(blobs((64, 64)))[None, None]
    noise = torch.rand(1, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    assert abs(float(mi(image, noise))) < 0.05  # mi is minus the mutual information
    binned = np.digitize(image.numpy().ravel(), np.linspace(0, 1, 16))
    hard = mutual_info_score(binned, binned)  # the entropy of 16 hard bins
    assert 0.5 * hard < -float(mi(image, image)) <= hard  # Parzen windows smooth it a little


def test_lncc_box_filter_matches_average_pooling():
    from medlens.registration.similarity import _box

    x = torch.rand(1, 2, 11, 17, 9, generator=torch.Generator().manual_seed(1))
    reference = torch.nn.functional.avg_pool3d(x, 5, stride=1, padding=2, count_include_pad=False)
    assert torch.allclose(_box(x, 5), reference, atol=1e-5)
    assert float(lncc(x[:, :1], x[:, :1])) < 5e-3  # 0 but for the epsilon


@pytest.mark.parametrize("shape", [(24, 28), (16, 20, 18)])
def test_scaling_and_squaring_gives_a_fold_free_invertible_map(shape):
    velocity = smooth_field(shape, amplitude=4.0)
    forward, backward = integrate(velocity), integrate(-velocity)
    assert folding_fraction(forward[0].numpy()) == 0.0
    assert float(forward.abs().max()) > 2.0  # it moves
    # exp(v) then exp(-v) is the identity away from the edges
    roundtrip = compose(forward, backward)[(..., *[slice(4, -4)] * len(shape))]
    assert float(roundtrip.abs().max()) < 0.3


def test_jacobian_of_a_linear_map_is_its_determinant():
    shape = (10, 12, 14)
    z, y, x = np.meshgrid(*[np.arange(s, dtype=float) for s in shape], indexing="ij")
    a = np.array([[0.1, 0.2, 0.0], [0.0, -0.3, 0.1], [0.05, 0.0, 0.2]])  # u = A p, p = (x, y, z)
    points = np.stack([x, y, z])
    field = np.einsum("ij,j...->i...", a, points)
    assert np.allclose(jacobian_determinant(field), np.linalg.det(np.eye(3) + a))
    assert sdlogj(field) < 1e-9
    folded = np.einsum("ij,j...->i...", np.diag([-1.5, 0, 0]), points)  # x -> -0.5 x
    assert folding_fraction(folded) == 1.0


def test_jacobian_matches_simpleitk():
    sitk = pytest.importorskip("SimpleITK")
    field = smooth_field((12, 14, 16), amplitude=3.0, seed=2)[0].numpy()
    vectors = np.moveaxis(field, 0, -1).astype(np.float64)  # (z, y, x, 3) with x first
    image = sitk.GetImageFromArray(vectors, isVector=True)
    reference = sitk.GetArrayFromImage(sitk.DisplacementFieldJacobianDeterminant(image))
    inner = (slice(1, -1),) * 3
    assert np.allclose(jacobian_determinant(field)[inner], reference[inner], atol=1e-4)


def geometry(n):
    """A grid with spacing, origin and a rotated direction."""
    angle = 0.3
    rot = np.eye(n)
    rot[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    spacing = (1.2, 0.9, 1.5)[:n]
    return {"spacing": spacing, "origin": (5.0, -3.0, 2.0)[:n], "direction": rot}


def known_affine(n):
    out = np.eye(n + 1)
    theta = 0.12
    out[:2, :2] = [[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]
    out[:n, :n] *= 1.06
    out[:n, n] = (2.5, -1.5, 1.0)[:n]
    return out


@pytest.mark.parametrize("n", [2, 3])
def test_a_known_affine_is_recovered(n):
    shape = (40, 44) if n == 2 else (28, 32, 30)
    fixed = Image(blobs(shape, seed=3), **geometry(n))
    truth = known_affine(n)
    moving = Registration(
        fixed, fixed, np.linalg.inv(truth), None
    ).warp()  # moving(T(p)) = fixed(p)
    found = register(fixed, moving, method="affine", similarity="ncc", iterations=150)
    centre = fixed.index_to_world((np.asarray(fixed.size) - 1) / 2)
    corners = centre + np.eye(n) * 8
    mapped_true = corners @ truth[:n, :n].T + truth[:n, n]
    mapped = corners @ found.world[:n, :n].T + found.world[:n, n]
    assert np.abs(mapped - mapped_true).max() < 0.5  # mm, within half a voxel


@pytest.mark.parametrize("n", [2, 3])
def test_a_known_deformation_is_recovered(n):
    shape = (48, 52) if n == 2 else (28, 32, 30)
    fixed = Image(blobs(shape, seed=4, count=10), spacing=(1.0,) * n)
    velocity = smooth_field(shape, amplitude=2.5, seed=5)
    truth = integrate(velocity)
    inverse = integrate(-velocity)  # moving(x + truth(x)) = fixed(x)
    moving = Registration(fixed, fixed, np.eye(n + 1), inverse).warp()
    found = register(fixed, moving, initial="none", similarity="ncc", iterations=150)
    inner = (slice(None), slice(None), *[slice(6, -6)] * n)
    before = float(truth[inner].norm(dim=1).mean())
    error = float((found.field - truth)[inner].norm(dim=1).mean())
    assert error < 0.35 * before
    assert folding_fraction(found.field[0].numpy()) == 0.0


def test_mind_recovers_a_deformation_across_a_remapping_of_intensities():
    """A simulated second modality (a non-monotone remapping): MIND's descriptors, computed once
    per level and warped, recover the field; they are the descriptors the image-level MIND
    compares."""
    from medlens.registration.similarity import mind, mind_descriptors

    shape = (48, 52)
    fixed = Image(blobs(shape, seed=4, count=10), spacing=(1.0, 1.0))
    velocity = smooth_field(shape, amplitude=2.5, seed=5)
    truth = integrate(velocity)
    moved = np.asarray(Registration(fixed, fixed, np.eye(3), integrate(-velocity)).warp().array)
    moving = fixed.with_array((1 - moved + 0.4 * np.sin(3 * np.pi * moved)).astype(np.float32))
    a, b = (torch.from_numpy(np.asarray(i.array))[None, None] for i in (fixed, moving))
    assert mind.features is mind_descriptors
    assert float(mind.compare(mind.features(a), mind.features(b))) == pytest.approx(
        float(mind(a, b)), rel=1e-6
    )
    found = register(fixed, moving, initial="none", similarity="mind", iterations=150)
    inner = (slice(None), slice(None), *[slice(6, -6)] * 2)
    before = float(truth[inner].norm(dim=1).mean())
    error = float((found.field - truth)[inner].norm(dim=1).mean())
    assert error < 0.5 * before


def test_inverse_consistency_is_zero_for_exact_inverses_and_measures_a_mismatch():
    """A transform and its exact inverse (an affine, a field and exp(-v)) land every point on
    itself; the same transform twice misses by the map's own movement."""
    from medlens.registration.outputs import inverse_consistency

    shape = (28, 30)
    fixed = Image(blobs(shape, seed=1), **geometry(2))
    moving = Image(blobs(shape, seed=2), spacing=(1.2, 0.9), origin=(4.0, -3.0))
    a = known_affine(2)
    exact = inverse_consistency(
        Registration(fixed, moving, a, None), Registration(moving, fixed, np.linalg.inv(a), None)
    )
    assert exact["mean_mm"] < 1e-6 and exact["fraction"] > 0.5
    wrong = inverse_consistency(
        Registration(fixed, moving, a, None), Registration(moving, fixed, a, None)
    )
    assert wrong["mean_mm"] > 2.0
    # a diffeomorphism and its inverse exp(-v), on one grid: small, not zero (interpolation)
    same = Image(blobs(shape, seed=1), spacing=(1.0, 1.0))
    velocity = smooth_field(shape, amplitude=2.0, seed=3)
    there = Registration(same, same, np.eye(3), integrate(velocity))
    back = Registration(same, same, np.eye(3), integrate(-velocity))
    assert inverse_consistency(there, back)["mean_mm"] < 0.1
    assert inverse_consistency(there, there)["mean_mm"] > 0.5


def test_written_transforms_warp_as_simpleitk_does(tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    shape = (20, 24, 22)
    fixed = Image(blobs(shape, seed=6), **geometry(3))
    moving = Image(blobs((22, 26, 20), seed=7), spacing=(1.1, 1.0, 1.3), origin=(3.0, 0.0, 1.0))
    field = integrate(smooth_field(shape, amplitude=1.5, seed=8))
    result = Registration(fixed, moving, known_affine(3), field)
    ours = np.asarray(result.warp().array)

    def sitk_image(image):
        out = sitk.GetImageFromArray(np.asarray(image.array, np.float64))
        out.SetSpacing(image.spacing)
        out.SetOrigin(image.origin)
        out.SetDirection(np.asarray(image.direction).reshape(-1).tolist())
        return out

    path = write_displacement(tmp_path / "displacement.nii.gz", result.displacement_mm(), fixed)
    transform = sitk.DisplacementFieldTransform(sitk.ReadImage(str(path), sitk.sitkVectorFloat64))
    theirs = sitk.GetArrayFromImage(
        sitk.Resample(sitk_image(moving), sitk_image(fixed), transform, sitk.sitkLinear, 0.0)
    )
    coords = result.coords()[0].numpy()  # moving index per fixed voxel: compare well inside
    inner = np.all((coords > 1) & (coords < np.asarray(moving.size) - 2), axis=-1)
    assert inner.mean() > 0.3 and np.abs(ours - theirs)[inner].max() < 1e-3
    affine_only = Registration(fixed, moving, known_affine(3), None)
    tfm = write_affine(tmp_path / "affine.tfm", affine_only.world)
    theirs = sitk.GetArrayFromImage(
        sitk.Resample(
            sitk_image(moving), sitk_image(fixed), sitk.ReadTransform(str(tfm)), sitk.sitkLinear
        )
    )
    coords = affine_only.coords()[0].numpy()
    inner = np.all((coords > 1) & (coords < np.asarray(moving.size) - 2), axis=-1)
    assert np.abs(np.asarray(affine_only.warp().array) - theirs)[inner].max() < 1e-3
    assert np.allclose(read_affine(tfm), affine_only.world)
    vectors, grid = read_displacement(path)
    assert grid.same_grid(fixed) and np.allclose(vectors, result.displacement_mm(), atol=1e-5)


def test_bad_inputs_are_refused_in_one_line(tmp_path):
    fixed = Image(blobs((20, 22)), spacing=(1.0, 1.0))
    with pytest.raises(MedlensError, match="2D fixed image and a 3D"):
        register(fixed, Image(blobs((8, 9, 10))))
    nan = blobs((20, 22))
    nan[3, 4] = np.nan
    with pytest.raises(MedlensError, match="NaN"):
        register(fixed, Image(nan))
    far = Image(blobs((20, 22)), origin=(500.0, 0.0))
    with pytest.raises(MedlensError, match="do not overlap"):
        register(fixed, far, initial="none")
    with pytest.raises(MedlensError, match="similarity 'ssd'"):
        register(fixed, fixed, similarity="ssd")


def test_a_diverging_optimisation_is_reported_not_written(tmp_path, monkeypatch):
    from medlens.registration import register as module

    def wild(pairs, world, loss, **kw):  # an "optimiser" that throws the images apart
        out = np.array(world, float)
        out[:2, 2] += 6.0
        return out, module.Stage("affine")

    monkeypatch.setattr(module, "affine_stage", wild)
    fixed = Image(blobs((32, 32), seed=9))
    with pytest.raises(MedlensError, match="diverged"):
        register(fixed, fixed, method="affine")


def test_the_cli_writes_the_contracted_files_and_refuses_bad_landmarks(tmp_path, capsys):
    from medlens.cli.main import main
    from medlens.io import save_image

    rng_shape = (24, 26, 22)
    fixed = Image(blobs(rng_shape, seed=10), spacing=(1.0, 1.0, 1.0))
    truth = integrate(smooth_field(rng_shape, amplitude=1.5, seed=11))
    moving = Registration(fixed, fixed, np.eye(4), truth).warp()
    labels = Image((blobs(rng_shape, seed=10) > 0.5).astype(np.uint8), spacing=(1.0, 1.0, 1.0))
    moved_labels = Registration(fixed, fixed, np.eye(4), truth).warp(labels, labels=True)
    inputs = tmp_path / "in"
    paths = {}
    for name, image in (("f", fixed), ("m", moving), ("fl", labels), ("ml", moved_labels)):
        paths[name] = save_image(image, inputs / f"{name}.nii.gz")
    (inputs / "a.csv").write_text(",X,Y,Z\n1,10,12,11\n2,5,6,7\n")
    (inputs / "b.csv").write_text("X,Y,Z\n10,12,11\n")
    out = tmp_path / "out"
    base = ["register", str(paths["f"]), str(paths["m"]), "--similarity", "ncc", "--quiet", "-o"]
    args = [*base, str(out)]  # ncc: LNCC overfits these images' fine noise texture
    labelled = [*args, "--fixed-labels", str(paths["fl"]), "--moving-labels", str(paths["ml"])]
    assert main(labelled) == 0, capsys.readouterr().err
    files = ("warped.nii.gz", "warped_labels.nii.gz", "displacement.nii.gz", "metrics.json")
    for name in (*files, "affine.tfm", "report.html"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["labels"]["dice_mean"] > metrics["labels_before"]["dice_mean"]
    report = (out / "report.html").read_text()
    for heading in ("Checkerboard", "Deformed grid", "Jacobian determinant"):
        assert heading in report
    assert report.count("data:image/png;base64") == 4  # every figure was drawn
    assert metrics["folding_fraction"] < 0.001
    assert main([*base, str(tmp_path / "both"), "--inverse-consistency"]) == 0
    both = json.loads((tmp_path / "both" / "metrics.json").read_text())["inverse_consistency"]
    assert 0 < both["mean_mm"] < 0.5 and both["fraction"] > 0.9
    landmarks = ["--landmarks", str(inputs / "a.csv"), str(inputs / "b.csv")]
    capsys.readouterr()
    assert main([*base, str(tmp_path / "o2"), *landmarks]) == 1
    assert "2 landmarks against 1" in capsys.readouterr().err
    save_image(Image(np.zeros((5, 6, 7), np.uint8)), inputs / "small.nii.gz")
    small = ["--fixed-labels", str(inputs / "small.nii.gz"), "--moving-labels", str(paths["ml"])]
    assert main([*base, str(tmp_path / "o3"), *small]) == 1
    assert "small.nii.gz" in capsys.readouterr().err
    assert not (tmp_path / "o3").exists() or not any((tmp_path / "o3").iterdir())


@pytest.mark.slow
def test_hippocampus_pairs_align_better_than_their_centres(real):
    from medlens.io import load_image
    from medlens.metrics.segmentation import dice
    from medlens.registration.register import centre_alignment

    root = real("msd_hippocampus")
    scores = []
    for a, b in (("001", "003"), ("004", "006")):
        f, m = (load_image(root / "imagesTr" / f"hippocampus_{c}.nii.gz") for c in (a, b))
        fl, ml = (
            load_image(root / "labelsTr" / f"hippocampus_{c}.nii.gz", role="label") for c in (a, b)
        )
        start = Registration(f, m, centre_alignment(f, m), None).warp(ml, labels=True)
        found = register(f, m).warp(ml, labels=True)
        before = np.mean([dice(start.array, fl.array, label=k) for k in (1, 2)])
        after = np.mean([dice(found.array, fl.array, label=k) for k in (1, 2)])
        scores.append((before, after))
    assert all(after > before for before, after in scores), scores


@pytest.mark.slow
def test_a_histology_stain_pair_lands_its_landmarks(real, tmp_path):
    """2D RGB sections of different sizes and stains (H&E against pan-cytokeratin), by MI."""
    from medlens.io import load_image
    from medlens.registration.outputs import matched_landmarks, registration_metrics

    folder = real("histology_pairs", "rat-kidney_", "scale-5pc")
    fixed = load_image(folder / "Rat-Kidney_HE.jpg")
    moving = load_image(folder / "Rat-Kidney_PanCytokeratin.jpg")
    points = matched_landmarks(
        folder / "Rat-Kidney_HE.csv", folder / "Rat-Kidney_PanCytokeratin.csv"
    )
    assert len(points[0]) == 69  # 71 against 69, matched by their numbers
    result = register(fixed, moving, similarity="mi", iterations=60)
    metrics = registration_metrics(result, landmarks=points)
    assert metrics["landmarks_before"]["rtre_median"] > 0.015
    assert metrics["landmarks"]["rtre_median"] < 0.006  # ANHIR's rTRE, median
    assert metrics["folding_fraction"] < 0.001


def test_a_label_missing_on_one_side_scores_without_nan(tmp_path):
    from medlens.registration.outputs import write_registration

    fixed = Image(blobs((20, 22), seed=12))
    labels = np.zeros((20, 22), np.uint8)
    labels[5:10, 5:10], labels[12:16, 12:18] = 1, 2
    moving_labels = np.where(labels == 2, 0, labels).astype(np.uint8)  # label 2 gone
    files = write_registration(
        Registration(fixed, fixed, np.eye(3), None),
        tmp_path / "out",
        fixed_labels=fixed.with_array(labels),
        moving_labels=fixed.with_array(moving_labels),
    )
    text = files["metrics"].read_text()
    assert "NaN" not in text and "Infinity" not in text
    scores = json.loads(text)["labels"]["per_label"]
    assert scores["1"]["dice"] == 1.0 and scores["2"]["dice"] == 0.0
    assert scores["2"]["hd95_mm"] is None


def test_the_centre_alignment_uses_each_images_own_grid():
    from medlens.registration.register import centre_alignment

    fixed = Image(blobs((20, 24)), spacing=(1.0, 1.0), origin=(0.0, 0.0))
    moving = Image(blobs((10, 12)), spacing=(2.0, 2.0), origin=(30.0, -5.0))  # same extent
    shift = centre_alignment(fixed, moving)[:2, 2]
    fixed_centre = fixed.index_to_world((np.asarray(fixed.size) - 1) / 2)
    moving_centre = moving.index_to_world((np.asarray(moving.size) - 1) / 2)
    assert np.allclose(fixed_centre + shift, moving_centre)
    assert np.allclose(shift, [29.5, -5.5])  # (41, 4) - (11.5, 9.5)
