"""IsoQuant codec, seed-style: `encode(x, bits=3)`, `decode(packed, head_dim, bits=3)`."""
from ._family_codecs import codec

encode, decode = codec("isoquant", 3)
