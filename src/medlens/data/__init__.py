"""Datasets: MedMNIST, CSV folders, Decathlon/nnU-Net, paired folders, HC18 and detection
(Pascal VOC, COCO, CSVs of boxes, LUNA16-style folders), plus splits.

Every reader returns a :class:`Dataset` of :class:`Sample`; :func:`open_dataset` picks the reader
from what is on disk. Heavy dependencies (scikit-learn, SciPy, the image readers) load on first
use, so importing this package stays cheap.
"""

from __future__ import annotations

from medlens.data.csv_folder import CSVFolderDataset
from medlens.data.dataset import TASKS, Dataset, Sample, as_label_map
from medlens.data.decathlon import DecathlonDataset, read_dataset_json
from medlens.data.detection import (
    BoxCSVDataset,
    COCODataset,
    DetectionDataset,
    LUNA16Dataset,
    VOCDataset,
    boxes_index_to_world,
    boxes_world_to_index,
    voc_splits,
)
from medlens.data.fingerprint import fingerprint
from medlens.data.hc18 import (
    HC18Dataset,
    convert_hc18,
    ellipse_circumference,
    fill_outline,
    hc18_subject,
)
from medlens.data.label_boxes import LabelBoxDataset, open_detection
from medlens.data.medmnist import MEDMNIST_INFO, MedMNISTDataset, available_splits
from medlens.data.open import detect_format, open_dataset
from medlens.data.paired import PairedFolderDataset
from medlens.data.splits import (
    kfold_splits,
    load_splits,
    save_splits,
    split_indices,
    train_val_split,
)

__all__ = [
    "MEDMNIST_INFO",
    "TASKS",
    "BoxCSVDataset",
    "COCODataset",
    "CSVFolderDataset",
    "Dataset",
    "DecathlonDataset",
    "DetectionDataset",
    "HC18Dataset",
    "LUNA16Dataset",
    "LabelBoxDataset",
    "MedMNISTDataset",
    "PairedFolderDataset",
    "Sample",
    "VOCDataset",
    "as_label_map",
    "available_splits",
    "boxes_index_to_world",
    "boxes_world_to_index",
    "convert_hc18",
    "detect_format",
    "ellipse_circumference",
    "fill_outline",
    "fingerprint",
    "hc18_subject",
    "kfold_splits",
    "load_splits",
    "open_dataset",
    "open_detection",
    "read_dataset_json",
    "save_splits",
    "split_indices",
    "train_val_split",
    "voc_splits",
]
