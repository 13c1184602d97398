"""medlens apply-transform: images, labels and points through written transforms."""

from __future__ import annotations

import numpy as np
import pytest

from medlens.image import Image
from medlens.registration.apply import WorldTransform, read_transform, resample_through
from medlens.registration.fields import integrate
from medlens.registration.register import Registration
from medlens.registration.transform_io import write_affine, write_displacement

from .test_register import blobs, geometry, known_affine, smooth_field

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def pair():
    fixed = Image(blobs((20, 24, 22), seed=1), **geometry(3))
    moving = Image(blobs((22, 26, 20), seed=2), spacing=(1.1, 1.0, 1.3), origin=(3.0, 0.0, 1.0))
    return fixed, moving


def sitk_image(sitk, image):
    out = sitk.GetImageFromArray(np.asarray(image.array, np.float64))
    out.SetSpacing(image.spacing)
    out.SetOrigin(image.origin)
    out.SetDirection(np.asarray(image.direction).reshape(-1).tolist())
    return out


@pytest.mark.parametrize("how", ["linear", "bspline"])
def test_an_affine_file_resamples_as_simpleitk_does(tmp_path, how):
    sitk = pytest.importorskip("SimpleITK")
    fixed, moving = pair()
    tfm = write_affine(tmp_path / "a.tfm", known_affine(3))
    ours = np.asarray(resample_through(read_transform(tfm), moving, fixed, how).array)
    kind = {"linear": sitk.sitkLinear, "bspline": sitk.sitkBSpline}[how]
    theirs = sitk.GetArrayFromImage(
        sitk.Resample(
            sitk_image(sitk, moving), sitk_image(sitk, fixed), sitk.ReadTransform(str(tfm)), kind
        )
    )
    coords = Registration(fixed, moving, known_affine(3), None).coords()[0].numpy()
    inner = np.all((coords > 2) & (coords < np.asarray(moving.size) - 3), axis=-1)
    assert inner.mean() > 0.3
    assert np.abs(ours - theirs)[inner].max() < (1e-4 if how == "linear" else 2e-3)


def test_a_register_output_reproduces_its_warped_image_and_labels(tmp_path):
    fixed, moving = pair()
    field = integrate(smooth_field(fixed.spatial_shape, amplitude=1.5, seed=3))
    result = Registration(fixed, moving, known_affine(3), field)
    write_displacement(tmp_path / "displacement.nii.gz", result.displacement_mm(), fixed)
    chain = read_transform(tmp_path)  # the folder: its displacement.nii.gz
    ours = np.asarray(resample_through(chain, moving, fixed).array)
    coords = result.coords()[0].numpy()
    inner = np.all((coords > 1) & (coords < np.asarray(moving.size) - 2), axis=-1)
    assert np.abs(ours - np.asarray(result.warp().array))[inner].max() < 1e-3
    labels = moving.with_array((np.asarray(moving.array) > 0.5).astype(np.uint8))
    warped = resample_through(chain, labels, fixed, "onehot")
    assert warped.array.dtype == np.uint8
    agree = np.mean(warped.array[inner] == result.warp(labels, labels=True).array[inner])
    assert agree > 0.995


def test_points_go_through_the_inverse_and_chains_compose():
    fixed, moving = pair()
    field = integrate(smooth_field(fixed.spatial_shape, amplitude=2.0, seed=4))
    result = Registration(fixed, moving, known_affine(3), field)
    chain = WorldTransform.field(result.displacement_mm(), fixed)
    rng = np.random.default_rng(0)
    points = fixed.index_to_world(rng.uniform(4, 14, size=(20, 3)))
    moved = chain.map(points)
    assert np.allclose(moved, result.map_points(points), atol=1e-3)
    assert np.abs(chain.inverse_map(moved) - points).max() < 1e-2
    assert np.abs(chain.inverted().map(moved) - points).max() < 0.05  # on the grid, interpolated
    a, b = known_affine(3), np.linalg.inv(known_affine(3)) @ known_affine(3) @ known_affine(3)
    both = WorldTransform.affine(a).then(WorldTransform.affine(b))
    assert np.allclose(both.map(points), points @ (b @ a)[:3, :3].T + (b @ a)[:3, 3])


def test_the_cli_maps_an_image_points_and_writes_the_chain(tmp_path, capsys):
    from medlens.cli.main import main
    from medlens.io import load_image, save_image

    fixed, moving = pair()
    f = save_image(fixed, tmp_path / "in" / "f.nii.gz")
    m = save_image(moving, tmp_path / "in" / "m.nii.gz")
    tfm = write_affine(tmp_path / "in" / "a.tfm", known_affine(3))
    points = tmp_path / "in" / "p.csv"
    points.write_text(",X,Y,Z\n1,10,12,8\n2,4,5,6\n")
    out = tmp_path / "out"

    def apply(*args) -> int:
        return main(["apply-transform", *map(str, args), "--reference", str(f)])

    assert apply(tfm, "--input", m, "-o", out / "w.nii.gz") == 0, capsys.readouterr().err
    assert load_image(out / "w.nii.gz").same_grid(fixed)
    assert apply(tfm, "--input", points, "--moving", m, "-o", out / "p.csv") == 0
    lines = (out / "p.csv").read_text().splitlines()
    assert lines[0] == "id,X,Y,Z" and lines[1].startswith("1,")
    mapped = np.array([[float(v) for v in line.split(",")[1:]] for line in lines[1:]])
    back = moving.world_to_index(
        WorldTransform.affine(known_affine(3)).map(fixed.index_to_world(mapped))
    )
    assert np.allclose(back, [[10, 12, 8], [4, 5, 6]], atol=1e-3)
    assert apply(tfm, tfm, "--invert", "-o", out / "chain.nii.gz") == 0
    chain = read_transform(out / "chain.nii.gz")
    p = fixed.index_to_world(np.array([[8.0, 9.0, 10.0]]))
    twice = WorldTransform.affine(np.linalg.inv(known_affine(3) @ known_affine(3)))
    assert np.allclose(chain.map(p), twice.map(p), atol=1e-3)
    capsys.readouterr()
    assert apply(points, "-o", out / "x.nii.gz") == 1
    assert "p.csv: not a transform" in capsys.readouterr().err
