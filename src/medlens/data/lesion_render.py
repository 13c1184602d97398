"""Simulated lesions rendered into real 3D volumes, in millimetres (NumPy and SciPy only).

A lesion is a sphere or an ellipsoid whose equivalent diameter (the diameter of the sphere of the
same volume) is drawn log-uniformly, say 3-30 mm, with a random orientation in world space (so
anisotropic voxels and oblique grids draw the same physical shape). Its edge is a logistic
profile about 0.5-1 mm wide, widened by the voxel size (partial volume). The lesion shifts and
scales the image's own intensities instead of painting a flat blob, so the tissue's texture
stays inside it, plus a little spatially correlated noise. Contrast is set against the
lesion's surroundings, so every lesion is one a reader could see and annotate: the shift is 1.5-4
times the standard deviation of the tissue around it (the shell outside its edge: texture, noise
and neighbouring structures alike; ``cnr``), kept to 20-250 HU in CT and 10-80 % of the local
1-99 % range elsewhere (MR); in the lung a lesion is a soft-tissue nodule (-30 to 60 HU). Some
lesions have a brighter rim or a darker (necrotic) core.

Size: a lesion narrower than two voxels along the grid's coarsest axis is not resolved by the
image, so the smallest diameter drawn is the larger of ``min_mm`` and that (6 mm on a 3 mm grid;
:func:`resolvable_mm`).

Placement: centres lie in the body (above the volume's Otsu threshold), away from the border by
the lesion's radius, far enough from each other that lesions never overlap; where a label map is
given, a share of them sit on the edge of a labelled organ. Centres are voxel centres, so the
centre voxel always belongs to its lesion's mask, however small the lesion.

This module sits in ``data`` so that the dataset writer (:mod:`medlens.data.simulate_lesions`)
and the explanations above it (:mod:`medlens.explain.lesions`) share one renderer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from medlens.image import Image, Role

__all__ = [
    "Lesion",
    "foreground",
    "insert_lesions",
    "is_ct_like",
    "otsu_threshold",
    "place_lesions",
    "random_rotation",
    "render_lesions",
    "resolvable_mm",
    "soft_edge",
]

PATTERNS = ("solid", "rim", "core")
_TRUNCATE = 6.0  # the profile is cut to 0 beyond this many edge widths outside the surface
CNR = (1.5, 4.0)  # the shift in standard deviations of the surrounding tissue
CT_HU = (20.0, 250.0)  # the shift's bounds in CT (outside the lung)
MR_SPAN = (0.1, 0.8)  # ... elsewhere, as shares of the local 1-99 % range
RESOLVED_VOXELS = 2.0  # the smallest diameter, in voxels along the coarsest axis


@dataclass
class Lesion:
    """One simulated lesion: shape, place and appearance.

    Attributes:
        centre: index ``(i, j, k)`` of its centre voxel.
        world: LPS world position of the centre (mm).
        semi_axes: the ellipsoid's semi-axes (mm), along the columns of ``rotation``.
        rotation: ``3 x 3`` world directions of the axes (a proper rotation).
        diameter: equivalent sphere diameter (mm): ``2 * prod(semi_axes) ** (1/3)``.
        edge: logistic scale of the soft edge (mm), partial volume included.
        pattern: ``solid``, ``rim`` (brighter rim) or ``core`` (darker centre).
        organ: the label at the centre when placed on an organ's edge, else 0.
        delta: the intensity shift inside (set when rendered).
        cnr: ``|delta|`` over the standard deviation of the tissue around the lesion (set when
            rendered; a lung nodule's against the lung).
        bbox: the axis-aligned world box of the ellipsoid ``(x1, y1, z1, x2, y2, z2)`` (mm).
    """

    centre: tuple[int, int, int]
    world: tuple[float, float, float]
    semi_axes: tuple[float, float, float]
    rotation: np.ndarray
    diameter: float
    edge: float
    pattern: str = "solid"
    organ: int = 0
    delta: float = 0.0
    cnr: float = 0.0
    bbox: tuple[float, ...] = ()
    appearance: dict[str, float] = field(default_factory=dict, repr=False)

    @property
    def radius(self) -> float:
        """The largest semi-axis (mm): the radius of a sphere holding the lesion."""
        return max(self.semi_axes)


def random_rotation(ndim: int, rng: np.random.Generator) -> np.ndarray:
    """A random rotation matrix: any angle in 2D, a random orthogonal basis in 3D (QR of a
    Gaussian matrix, signs fixed so it is a proper rotation)."""
    if ndim == 2:
        a = rng.uniform(0, np.pi)
        return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    q, r = np.linalg.qr(rng.normal(size=(ndim, ndim)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def soft_edge(signed: np.ndarray, width: float) -> np.ndarray:
    """The logistic profile ``1 / (1 + exp(signed / width))``: 1 inside, 0.5 on the surface
    (``signed`` = 0, the distance outside it), 0 far outside."""
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(signed / width))


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values``: the cut maximising the between-class variance."""
    values = np.asarray(values, dtype=np.float64).ravel()
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return low
    counts, edges = np.histogram(values, bins=bins, range=(low, high))
    centres = (edges[:-1] + edges[1:]) / 2
    weight = np.cumsum(counts).astype(np.float64)
    total = weight[-1]
    mean = np.cumsum(counts * centres)
    w0, w1 = weight[:-1], total - weight[:-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mean[-1] * w0 - mean[:-1] * total) ** 2 / (w0 * w1)
    between[~np.isfinite(between)] = -1
    return float(edges[1 + int(np.argmax(between))])


def foreground(array: np.ndarray) -> np.ndarray:
    """The body: voxels above the Otsu threshold (all voxels when that leaves none)."""
    fg = np.asarray(array) > otsu_threshold(array)
    return fg if fg.any() else np.ones(np.shape(array), dtype=bool)


def is_ct_like(image: Image) -> bool:
    """CT by modality, else voxels that look like Hounsfield units (air well below -500)."""
    if image.modality:
        return image.modality.upper() == "CT"
    low, high = np.percentile(image.array, [1, 99])
    return bool(low < -500 and high > 0)


def _draw(
    rng: np.random.Generator, min_mm: float, max_mm: float, spacing: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray, float]:
    """Equivalent diameter (log-uniform), semi-axes, rotation and edge width of one lesion."""
    diameter = float(math.exp(rng.uniform(math.log(min_mm), math.log(max_mm))))
    if rng.random() < 0.4:
        ratios = np.ones(3)
    else:  # axis ratios up to about 2 : 1, the same volume
        ratios = np.exp(rng.uniform(-0.35, 0.35, size=3))
        ratios /= np.prod(ratios) ** (1 / 3)
    rotation = random_rotation(3, rng)
    # the blur of the boundary itself, widened by the voxel (partial volume)
    edge = float(math.hypot(rng.uniform(0.5, 1.0), 0.3 * float(np.mean(spacing))))
    return diameter, diameter / 2 * ratios, rotation, edge


def _appearance(rng: np.random.Generator) -> tuple[str, dict[str, float]]:
    pattern = str(rng.choice(PATTERNS, p=[0.6, 0.2, 0.2]))
    look = {
        "sign": float(rng.choice([-1.0, 1.0])),
        "cnr": float(rng.uniform(*CNR)),
        "scale": float(rng.uniform(0.7, 1.1)),
        "noise": float(rng.uniform(0.05, 0.15)),
        "inner": float(rng.uniform(0.55, 0.75)),
        "extra": float(rng.uniform(0.4, 0.8)),
        "nodule": float(rng.uniform(-30, 60)),  # HU of a solid lung nodule
    }
    return pattern, look


def resolvable_mm(spacing) -> float:
    """The smallest lesion diameter (mm) the grid of ``spacing`` resolves: two voxels along its
    coarsest axis."""
    return RESOLVED_VOXELS * float(np.max(spacing))


def _organ_edges(labels: np.ndarray) -> np.ndarray:
    """Voxels of a labelled structure that touch another label (or the background)."""
    from scipy import ndimage

    labels = np.asarray(labels)
    high = ndimage.maximum_filter(labels, size=3, mode="nearest")
    low = ndimage.minimum_filter(labels, size=3, mode="nearest")
    return (labels > 0) & (high != low)


def place_lesions(
    image: Image,
    count: int,
    rng: np.random.Generator,
    *,
    min_mm: float = 3.0,
    max_mm: float = 30.0,
    labels: np.ndarray | None = None,
    boundary_fraction: float = 0.3,
    threshold: float | None = None,
    tries: int = 8,
) -> list[Lesion]:
    """Draw up to ``count`` non-overlapping lesions that fit in ``image`` (3D, no leading axes).

    Each lesion's centre is a voxel in the body (preferring voxels at least half its radius
    inside), at least its radius plus two edge widths from the border. With ``labels`` (a
    label map on the image's grid) a ``boundary_fraction`` of them sit on an organ's edge (in
    the body instead where the room holds no edge). ``threshold``: the body's intensity
    threshold (default: Otsu's of ``image``; pass the whole volume's for a crop). A lesion that
    finds no room is drawn smaller, up to ``tries`` times, then left out: small crops may hold
    fewer lesions than asked (but never one below ``min_mm``, or below :func:`resolvable_mm` of
    the grid while ``max_mm`` allows).
    """
    from scipy import ndimage

    array = image.array
    if image.spatial_dims != 3 or image.leading:
        raise ValueError(f"lesions need a 3D volume without leading axes, got {array.shape}")
    if not 0 < min_mm <= max_mm:
        raise ValueError(f"need 0 < min_mm <= max_mm, got {min_mm}, {max_mm}")
    spacing = np.asarray(image.spacing)  # index order (x, y, z)
    spacing_zyx = spacing[::-1]
    min_mm = min(max(min_mm, resolvable_mm(spacing)), max_mm)
    shape = np.array(array.shape)
    fg = foreground(array) if threshold is None else array > threshold
    depth = ndimage.distance_transform_edt(fg, sampling=spacing_zyx)
    edges = None
    if labels is not None:
        if np.shape(labels) != array.shape:
            raise ValueError(f"labels {np.shape(labels)} are not on the image's grid {shape}")
        edges = _organ_edges(labels)
    lesions: list[Lesion] = []
    for _ in range(count):
        diameter, axes, rotation, edge = _draw(rng, min_mm, max_mm, spacing)
        pattern, look = _appearance(rng)
        on_edge = edges is not None and rng.random() < boundary_fraction
        where = edges if on_edge else None
        centre, edge_used = None, False
        for attempt in range(tries + 1):
            if attempt:  # no room: a smaller lesion of the same shape
                if diameter <= min_mm * (1 + 1e-9):
                    break
                shrink = max(0.75, min_mm / diameter)
                diameter, axes = diameter * shrink, axes * shrink
            centre, edge_used = _pick(rng, fg, depth, where, lesions, image, axes.max(), edge)
            if centre is not None:
                break
        if centre is None:
            continue
        world = image.index_to_world(np.array(centre[::-1], dtype=np.float64))
        half = np.sqrt(((rotation * axes[None, :]) ** 2).sum(1))  # world half-extents
        organ = int(np.asarray(labels)[centre]) if edge_used and labels is not None else 0
        lesions.append(
            Lesion(
                centre=tuple(int(c) for c in centre[::-1]),
                world=tuple(float(w) for w in world),
                semi_axes=tuple(float(a) for a in axes),
                rotation=rotation,
                diameter=float(2 * np.prod(axes) ** (1 / 3)),
                edge=edge,
                pattern=pattern,
                organ=organ,
                bbox=(*(world - half), *(world + half)),
                appearance=look,
            )
        )
    return lesions


def _pick(
    rng: np.random.Generator,
    fg: np.ndarray,
    depth: np.ndarray,
    edges: np.ndarray | None,
    placed: list[Lesion],
    image: Image,
    radius: float,
    edge: float,
) -> tuple[tuple[int, int, int] | None, bool]:
    """A random centre voxel ``(z, y, x)`` for a lesion of bounding ``radius`` (None when
    there is no room), and whether it lies on an organ's edge."""
    spacing_zyx = np.asarray(image.spacing)[::-1]
    margin = np.ceil((radius + 2 * edge) / spacing_zyx).astype(int)
    shape = np.array(fg.shape)
    if np.any(2 * margin >= shape):
        return None, False
    inner = tuple(slice(m, n - m) for m, n in zip(margin, shape, strict=True))
    room = np.zeros_like(fg)
    room[inner] = True
    choices = [room & fg & (depth >= 0.5 * radius), room & fg]
    if edges is not None:
        choices.insert(0, room & edges)
    for n, allowed in enumerate(choices):
        where = np.argwhere(allowed)
        if placed and len(where):
            world = image.index_to_world(where[:, ::-1].astype(np.float64))
            for other in placed:
                gap = radius + other.radius + 2 * (edge + other.edge)
                keep = np.linalg.norm(world - np.asarray(other.world), axis=1) >= gap
                where, world = where[keep], world[keep]
        if len(where):
            centre = tuple(int(v) for v in where[rng.integers(len(where))])
            return centre, edges is not None and n == 0
    return None, False


def render_lesions(
    image: Image,
    lesions: list[Lesion],
    rng: np.random.Generator,
    *,
    ct: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The image's voxels with ``lesions`` blended in, and their instance mask (1..k).

    Returns an array of the image's dtype (integers rounded and clipped; never below the
    image's minimum) and a ``uint8`` (``uint16`` beyond 255 lesions) label map where each
    lesion's profile is at least 0.5. Sets each lesion's ``delta``. Voxels farther than six
    edge widths outside every lesion are unchanged.
    """
    from scipy import ndimage

    source = image.array
    ct = is_ct_like(image) if ct is None else ct
    out = source.astype(np.float64)
    mask = np.zeros(source.shape, dtype=np.uint8 if len(lesions) < 256 else np.uint16)
    spacing_zyx = np.asarray(image.spacing)[::-1]
    linear = image.direction * np.asarray(image.spacing)[None, :]
    for k, lesion in enumerate(lesions, start=1):
        axes = np.asarray(lesion.semi_axes)
        reach = lesion.radius + _TRUNCATE * lesion.edge
        half = np.ceil(reach / spacing_zyx).astype(int) + 1
        centre = np.array(lesion.centre[::-1])  # (z, y, x)
        block = tuple(
            slice(max(0, c - h), min(n, c + h + 1))
            for c, h, n in zip(centre, half, source.shape, strict=True)
        )
        offsets = np.meshgrid(
            *[np.arange(s.start, s.stop) - c for s, c in zip(block, centre, strict=True)],
            indexing="ij",
        )
        index = np.stack(offsets[::-1], axis=-1).astype(np.float64)  # (..., (i, j, k))
        world = index @ linear.T
        local = (world @ lesion.rotation) / axes
        distance = np.linalg.norm(local, axis=-1)  # 1 on the surface
        radial = np.linalg.norm(world, axis=-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            ray = np.where(distance > 0, radial / distance, lesion.radius)  # surface radius
        profile = _profile(radial - ray, lesion.edge)
        values = out[block]
        inside = distance <= 1.0
        look = lesion.appearance
        scale = look["scale"]
        mean = values[inside].mean()
        around = values[(radial - ray) > 2 * lesion.edge]  # the tissue outside its edge
        spread = float(around.std()) if around.size > 1 else 0.0
        if ct and mean < -400:  # in the lung: a soft-tissue nodule
            delta, scale = look["nodule"] - mean, 0.3
        elif ct:
            delta = look["sign"] * float(np.clip(look["cnr"] * spread, *CT_HU))
        else:
            low, high = np.percentile(values, [1, 99])
            span = high - low if high > low else float(np.ptp(source)) or 1.0
            bounds = (MR_SPAN[0] * span, MR_SPAN[1] * span)
            delta = look["sign"] * float(np.clip(look["cnr"] * spread, *bounds))
        lesion.delta = float(delta)
        lesion.cnr = abs(float(delta)) / max(spread, 1e-12)
        sigma = np.maximum(1.0 / spacing_zyx, 0.5)
        noise = ndimage.gaussian_filter(rng.normal(size=values.shape), sigma, mode="nearest")
        noise *= look["noise"] * abs(delta) / max(float(noise.std()), 1e-12)
        change = profile * (delta + (scale - 1.0) * (values - mean) + noise)
        if lesion.pattern != "solid":
            core = _profile(radial - look["inner"] * ray, lesion.edge)
            if lesion.pattern == "rim":
                change += look["extra"] * abs(delta) * (profile - core)
            else:
                change -= look["extra"] * abs(delta) * core
        out[block] = values + change
        mask[block][inside] = k
    low = float(source.min())
    if np.issubdtype(source.dtype, np.integer):
        info = np.iinfo(source.dtype)
        out = np.clip(np.rint(out), max(low, info.min), info.max)
    else:
        out = np.maximum(out, low)
    return out.astype(source.dtype), mask


def _profile(signed: np.ndarray, edge: float) -> np.ndarray:
    profile = soft_edge(signed, edge)
    profile[signed > _TRUNCATE * edge] = 0.0
    return profile


def insert_lesions(
    image: Image,
    count: int,
    *,
    seed: int | np.random.Generator = 0,
    labels: Image | np.ndarray | None = None,
    min_mm: float = 3.0,
    max_mm: float = 30.0,
    boundary_fraction: float = 0.3,
) -> tuple[Image, Image, list[Lesion]]:
    """Insert up to ``count`` lesions into a real 3D ``image``; the image is not modified.

    Returns the new image (same grid, dtype and metadata), the lesions' instance mask as a
    label image on the same grid, and the :class:`Lesion` list (fewer than ``count`` when the
    volume has no room for them all). ``labels``: an organ label map on the same grid.
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    if isinstance(labels, Image):
        image.check_same_grid(labels, name="labels")
        labels = labels.array
    lesions = place_lesions(
        image,
        count,
        rng,
        min_mm=min_mm,
        max_mm=max_mm,
        labels=labels,
        boundary_fraction=boundary_fraction,
    )
    array, mask = render_lesions(image, lesions, rng)
    return image.with_array(array), image.with_array(mask, role=Role.LABEL), lesions
