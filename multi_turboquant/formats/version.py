"""Version of the byte layouts in docs/formats.md; bump on any change to the bytes."""
FORMAT_VERSION = 1
