"""Paired 2D image and mask folders (``images/`` + ``masks/``), matched by file stem.

Mask files may carry a suffix after the image's stem (``case1.png`` <-> ``case1_mask.png``,
``_Annotation``, ``_seg``, ...). Every image needs exactly one mask and every mask an image; the
error lists what did not match rather than silently training on a subset.
"""

from __future__ import annotations

from pathlib import Path

from medlens.data.dataset import Dataset, Entry, Sample, _lazy_io, as_label_map
from medlens.errors import DatasetError
from medlens.io.discover import IMAGE_SUFFIXES, file_stem

__all__ = ["IMAGE_SUFFIXES", "MASK_SUFFIXES", "PairedFolderDataset", "file_stem"]

MASK_SUFFIXES = ("_mask", "_masks", "_Annotation", "_annotation", "_seg", "_label", "_gt")
_MAX_LISTED = 5


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(IMAGE_SUFFIXES)
    )


class PairedFolderDataset(Dataset):
    """Images and their masks in two sibling folders.

    Args:
        root: folder holding both subfolders.
        images: name of the image folder.
        masks: name of the mask folder.
        mask_suffixes: suffixes a mask's stem may add to its image's stem.
        class_names: names of the label values (default background/foreground).
        modality: modality code given to loaded images.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        images: str = "images",
        masks: str = "masks",
        mask_suffixes: tuple[str, ...] = MASK_SUFFIXES,
        class_names: list[str] | None = None,
        modality: str | None = None,
    ) -> None:
        root = Path(root)
        self.source = root
        self.name = root.name
        self.task = "segmentation"
        self.modality = modality
        self.class_names = list(class_names or ["background", "foreground"])
        image_dir, mask_dir = root / images, root / masks
        for folder in (image_dir, mask_dir):
            if not folder.is_dir():
                raise DatasetError(f"no {folder.name}/ folder", root)
        image_files = _image_files(image_dir)
        if not image_files:
            raise DatasetError("no image files", image_dir)
        by_stem = {}
        for file in image_files:
            stem = file_stem(file.name)
            if stem in by_stem:
                raise DatasetError(f"two images share the stem {stem!r}", file)
            by_stem[stem] = file
        pairs: dict[str, Path] = {}
        unmatched_masks = []
        for mask in _image_files(mask_dir):
            stem = _image_stem(file_stem(mask.name), by_stem, mask_suffixes)
            if stem is None:
                unmatched_masks.append(mask.name)
            elif stem in pairs:
                raise DatasetError(
                    f"two masks for image {by_stem[stem].name}: {pairs[stem].name}, {mask.name}",
                    mask_dir,
                )
            else:
                pairs[stem] = mask
        unmatched_images = [by_stem[s].name for s in by_stem if s not in pairs]
        if unmatched_images or unmatched_masks:
            parts = []
            sides = (
                ("images without mask", unmatched_images),
                ("masks without image", unmatched_masks),
            )
            for what, names in sides:
                if names:
                    more = ", ..." if len(names) > _MAX_LISTED else ""
                    parts.append(f"{len(names)} {what} ({', '.join(names[:_MAX_LISTED])}{more})")
            raise DatasetError("unmatched files: " + "; ".join(parts), root)
        self.entries = [
            Entry(id=stem, paths=(by_stem[stem],), mask_path=pairs[stem]) for stem in by_stem
        ]

    def _load(self, index: int) -> Sample:
        load_image, _ = _lazy_io()
        entry = self.entries[index]
        image = load_image(entry.paths[0])
        if self.modality is not None:
            image.modality = self.modality
        assert entry.mask_path is not None
        mask = as_label_map(load_image(entry.mask_path))
        image.check_same_grid(mask, name=str(entry.mask_path))
        meta = {"path": str(entry.paths[0]), "label_path": str(entry.mask_path)}
        return Sample(image, None, mask, entry.id, entry.subject, None, meta)


def _image_stem(mask_stem: str, images: dict[str, Path], suffixes: tuple[str, ...]) -> str | None:
    if mask_stem in images:
        return mask_stem
    for suffix in suffixes:
        if mask_stem.endswith(suffix) and mask_stem[: -len(suffix)] in images:
            return mask_stem[: -len(suffix)]
    return None
