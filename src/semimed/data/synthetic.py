"""Embedded default data: synthetic stand-ins for TMED-2 echo frames and abdominal CT.

Both generators are deterministic for a given seed, need only numpy / scipy / Pillow /
nibabel, and write the same on-disk layouts as the real data sets, so the rest of the
pipeline cannot tell them apart from user data:

- :func:`generate_echo` (``synthetic_echo``): TMED-2 style PNG frames + ``labels.csv``
  with view (PLAX / PSAX / A4C / A2C) and aortic-stenosis severity labels.
- :func:`generate_ct` (``synthetic_ct``): MSD / nnU-Net style ``imagesTr`` / ``labelsTr``
  NIfTI volumes + ``dataset.json`` with six imbalanced abdominal structures.
"""

from semimed.data.synthetic_ct import LABELS as CT_LABELS
from semimed.data.synthetic_ct import generate_ct
from semimed.data.synthetic_echo import CSV_COLUMNS as ECHO_CSV_COLUMNS
from semimed.data.synthetic_echo import SEVERITIES, VIEWS, generate_echo

__all__ = ["CT_LABELS", "ECHO_CSV_COLUMNS", "SEVERITIES", "VIEWS", "generate_ct", "generate_echo"]
