"""De-identification of DICOM (PS3.15 Annex E, Basic Profile and Options) and NIfTI.

    >>> from medlens.deid import Profile, anonymize, read_key
    >>> summary = anonymize("in/", "out/", profile=Profile(dates="shift"), key=read_key("k.bin"))

:class:`Deidentifier` works on single pydicom datasets; :func:`anonymize` on files, folder
trees and DICOMDIR file-sets, with an audit log and an optional mapping file.
"""

from medlens.deid.engine import AuditEntry, Deidentifier, Outcome
from medlens.deid.profile import EDITION, Profile
from medlens.deid.run import Summary, anonymize, burned_in_reason, read_key

__all__ = [
    "EDITION",
    "AuditEntry",
    "Deidentifier",
    "Outcome",
    "Profile",
    "Summary",
    "anonymize",
    "burned_in_reason",
    "read_key",
]
