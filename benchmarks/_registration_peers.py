"""The classical registration peers of ``benchmarks/registration.py``, each on files.

Every peer takes the fixed and moving image files (and the moving label map, when there is one)
and returns ``{"seconds", "field", "labels"}``: the whole transform as a displacement field in LPS
mm on the fixed grid (``(n, *S)``, array order, channel 0 along x; as ITK writes them), the moving
labels warped onto the fixed grid by nearest neighbour, and the wall time of the registration
alone (reading and writing excluded, as for medlens). Images are scaled to [0, 1] by their 1st
and 99th percentiles first, as medlens scales them.

- ``sitk_demons``: SimpleITK's centred affine (Mattes MI, regular-step gradient descent, shrink
  4-2-1), then its diffeomorphic demons (50 iterations, field smoothing 1.0) on the affinely
  resampled moving image after histogram matching, as SimpleITK's demons examples do;
- ``sitk_bspline``: the same affine, then a B-spline (mesh of 8 per axis, Mattes MI with 50 bins
  on 20% random samples, L-BFGS-B with its documented settings, shrink 4-2-1);
- ``elastix``: itk-elastix with its default ``affine`` and ``bspline`` parameter maps;
- ``ants_syn``: ANTsPy ``registration(type_of_transform="SyN")`` (its affine then SyN).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

__all__ = ["PEERS", "available"]


def _unit_sitk(path):
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path), sitk.sitkFloat32)
    if image.GetNumberOfComponentsPerPixel() > 1:  # RGB histology: the mean of the channels
        image = sitk.VectorIndexSelectionCast(image, 0, sitk.sitkFloat32)
    array = sitk.GetArrayViewFromImage(image)
    low, high = np.percentile(array, [1, 99])
    return sitk.Cast((image - float(low)) / max(float(high - low), 1e-6), sitk.sitkFloat32)


def _sitk_affine(fixed, moving):
    import SimpleITK as sitk

    n = fixed.GetDimension()
    initial = sitk.CenteredTransformInitializer(
        fixed, moving, sitk.AffineTransform(n), sitk.CenteredTransformInitializerFilter.GEOMETRY
    )
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.2, seed=0)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(1.0, 1e-4, 200)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([4, 2, 1])
    method.SetSmoothingSigmasPerLevel([2, 1, 0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    method.SetInitialTransform(initial, inPlace=False)
    return method.Execute(fixed, moving)


def _field(transform, fixed) -> np.ndarray:
    import SimpleITK as sitk

    field = sitk.TransformToDisplacementField(
        transform,
        sitk.sitkVectorFloat64,
        fixed.GetSize(),
        fixed.GetOrigin(),
        fixed.GetSpacing(),
        fixed.GetDirection(),
    )
    return np.moveaxis(sitk.GetArrayFromImage(field), -1, 0)


def _warp_labels(labels_path, fixed, transform):
    import SimpleITK as sitk

    if labels_path is None:
        return None
    labels = sitk.ReadImage(str(labels_path))
    out = sitk.Resample(labels, fixed, transform, sitk.sitkNearestNeighbor, 0)
    return sitk.GetArrayFromImage(out)


def _result(seconds: float, transform, fixed, labels_path) -> dict:
    return {
        "seconds": seconds,
        "field": _field(transform, fixed),
        "labels": _warp_labels(labels_path, fixed, transform),
    }


def sitk_demons(fixed_path, moving_path, labels_path=None) -> dict:
    import SimpleITK as sitk

    fixed, moving = _unit_sitk(fixed_path), _unit_sitk(moving_path)
    started = time.perf_counter()
    affine = _sitk_affine(fixed, moving)
    resampled = sitk.Resample(moving, fixed, affine, sitk.sitkLinear, 0.0)
    matched = sitk.HistogramMatching(resampled, fixed, 256, 7, True)
    demons = sitk.DiffeomorphicDemonsRegistrationFilter()
    demons.SetNumberOfIterations(50)
    demons.SetStandardDeviations(1.0)
    displacement = demons.Execute(fixed, matched)
    field = sitk.DisplacementFieldTransform(sitk.Cast(displacement, sitk.sitkVectorFloat64))
    total = sitk.CompositeTransform([affine, field])  # affine(field(p))
    return _result(time.perf_counter() - started, total, fixed, labels_path)


def sitk_bspline(fixed_path, moving_path, labels_path=None) -> dict:
    import SimpleITK as sitk

    fixed, moving = _unit_sitk(fixed_path), _unit_sitk(moving_path)
    started = time.perf_counter()
    affine = _sitk_affine(fixed, moving)
    n = fixed.GetDimension()
    bspline = sitk.BSplineTransformInitializer(fixed, [8] * n)
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.2, seed=0)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsLBFGSB(
        gradientConvergenceTolerance=1e-5,
        numberOfIterations=100,
        maximumNumberOfCorrections=5,
        maximumNumberOfFunctionEvaluations=1000,
        costFunctionConvergenceFactor=1e7,
    )
    method.SetShrinkFactorsPerLevel([4, 2, 1])
    method.SetSmoothingSigmasPerLevel([2, 1, 0])
    method.SetMovingInitialTransform(affine)
    method.SetInitialTransform(bspline, inPlace=True)
    method.Execute(fixed, moving)
    total = sitk.CompositeTransform([affine, bspline])
    return _result(time.perf_counter() - started, total, fixed, labels_path)


def elastix(fixed_path, moving_path, labels_path=None) -> dict:
    import itk

    def read(path):
        import SimpleITK as sitk

        unit = _unit_sitk(path)
        image = itk.image_from_array(sitk.GetArrayFromImage(unit).astype(np.float32))
        image.SetOrigin(unit.GetOrigin())
        image.SetSpacing(unit.GetSpacing())
        n = unit.GetDimension()
        image.SetDirection(np.asarray(unit.GetDirection()).reshape(n, n))
        return image

    fixed, moving = read(fixed_path), read(moving_path)
    parameters = itk.ParameterObject.New()
    parameters.AddParameterMap(parameters.GetDefaultParameterMap("affine"))
    parameters.AddParameterMap(parameters.GetDefaultParameterMap("bspline"))
    started = time.perf_counter()
    _, result = itk.elastix_registration_method(
        fixed, moving, parameter_object=parameters, log_to_console=False
    )
    seconds = time.perf_counter() - started
    import tempfile

    scratch = tempfile.mkdtemp(prefix="transformix-")  # it writes its files there, not into cwd
    field = itk.transformix_deformation_field(moving, result, output_directory=scratch)
    vectors = np.moveaxis(np.asarray(itk.array_from_image(field), dtype=np.float64), -1, 0)
    labels = None
    if labels_path is not None:
        import SimpleITK as sitk

        for k in range(result.GetNumberOfParameterMaps()):
            result.SetParameter(k, "ResampleInterpolator", "FinalNearestNeighborInterpolator")
            result.SetParameter(k, "FinalBSplineInterpolationOrder", "0")
        source = sitk.ReadImage(str(labels_path), sitk.sitkFloat32)
        image = itk.image_from_array(sitk.GetArrayFromImage(source))
        image.SetOrigin(source.GetOrigin())
        image.SetSpacing(source.GetSpacing())
        n = source.GetDimension()
        image.SetDirection(np.asarray(source.GetDirection()).reshape(n, n))
        warped = itk.transformix_filter(image, result, output_directory=scratch)
        labels = np.rint(np.asarray(itk.array_from_image(warped))).astype(np.int64)
    return {"seconds": seconds, "field": vectors, "labels": labels}


def ants_syn(fixed_path, moving_path, labels_path=None) -> dict:
    import ants

    def read(path):
        image = ants.image_read(str(path))
        if image.components > 1:
            image = ants.split_channels(image)[0]
        array = image.numpy()
        low, high = np.percentile(array, [1, 99])
        return (image - float(low)) / max(float(high - low), 1e-6)

    fixed, moving = read(fixed_path), read(moving_path)
    started = time.perf_counter()
    found = ants.registration(fixed, moving, type_of_transform="SyN")
    seconds = time.perf_counter() - started
    prefix = str(Path(found["fwdtransforms"][0]).parent / "composite")
    composite = ants.apply_transforms(
        fixed, fixed, transformlist=found["fwdtransforms"], compose=prefix
    )  # a file name: the warp and the affine as one displacement field
    field_image = ants.image_read(composite)
    vectors = np.moveaxis(field_image.numpy(), -1, 0)  # ANTs arrays are x, y, z order
    vectors = np.transpose(vectors, (0, *range(vectors.ndim - 1, 0, -1)))
    labels = None
    if labels_path is not None:
        source = ants.image_read(str(labels_path))
        warped = ants.apply_transforms(
            fixed, source, transformlist=found["fwdtransforms"], interpolator="nearestNeighbor"
        )
        labels = np.transpose(warped.numpy(), tuple(range(warped.dimension - 1, -1, -1)))
    return {"seconds": seconds, "field": vectors, "labels": labels}


PEERS = {
    "sitk_demons": sitk_demons,
    "sitk_bspline": sitk_bspline,
    "elastix": elastix,
    "ants_syn": ants_syn,
}


def available() -> dict[str, str | None]:
    """Each peer's import problem, or ``None`` when it can run."""
    modules = {
        "sitk_demons": "SimpleITK",
        "sitk_bspline": "SimpleITK",
        "elastix": "itk",
        "ants_syn": "ants",
    }
    out = {}
    for name, module in modules.items():
        try:
            __import__(module)
            out[name] = None
        except ImportError as error:
            out[name] = f"{module} not importable ({error})"
    return out
