"""Tools for testing medlens, and pipelines built on it, against broken and hostile input.

* :mod:`medlens.testing.corpus`: seed inputs built from the real data folder, one or more per
  reader (DICOM file, series, DICOMDIR, multi-frame; NIfTI; PNG/JPEG/TIFF/BMP; NumPy; MedMNIST,
  CSV, HC18 and Decathlon datasets; Pascal VOC and contour annotations).
* :mod:`medlens.testing.mutate`: byte, text, XML, JSON and structured mutators.
* :mod:`medlens.testing.fuzz`: runs the command line on each mutated input in a sandbox and
  checks that it fails cleanly, writes only its outputs, leaves its inputs alone and leaks no
  planted identifier.
"""
