"""Version of the byte layouts in docs/formats.md; bump on any change to the bytes."""
FORMAT_VERSION = 2
# Version 2 added the calibration centroid and its flag (the sign bit of a record's scale); every version-1
# record and calibration file reads the same in version 2.
READABLE_VERSIONS = (1, 2)
