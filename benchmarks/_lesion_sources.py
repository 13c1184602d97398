"""The real volumes the SIMULATED 3D lesions go into, split so the test set's subjects are new.

Three TotalSegmentator scans (CT, MR, a CT DICOM series) are the only licensed whole-body
volumes; a set made from them alone repeats the same three backgrounds, so a detector can learn
where lesions were instead of what they look like (measured: identical top scores in every
volume of one scan, with or without its lesion). The Decathlon hippocampus MRIs add 200 subjects:
every fourth case (sorted) goes to the test sources, the others to training, and both keep the
three scans (new crops and new lesions in the test set). The folders hold links to the files,
laid out as the sources are (``imagesTr`` beside ``labelsTr``, so lesions can sit on the
hippocampus's edge); nothing is copied.
"""

from __future__ import annotations

from pathlib import Path

from _common import link

TEST_EVERY = 4


def split_sources(root: Path, work: Path) -> tuple[Path, Path]:
    """``(train, test)`` source folders under ``work`` for ``medlens datasets
    simulate-lesions``, made once (reused when ``work/sources.done`` exists)."""
    train, test = work / "sources_train", work / "sources_test"
    marker = work / "sources.done"
    if marker.exists():
        return train, test
    for folder in (train, test):
        link(root / "totalsegmentator", folder / "totalsegmentator")
    hippocampus = root / "msd_hippocampus"
    cases = sorted(p.name for p in (hippocampus / "imagesTr").glob("*.nii.gz"))
    for i, name in enumerate(cases):
        folder = test if i % TEST_EVERY == 0 else train
        for sub in ("imagesTr", "labelsTr"):
            if (hippocampus / sub / name).is_file():
                link(hippocampus / sub / name, folder / "msd_hippocampus" / sub / name)
    marker.touch()
    return train, test
