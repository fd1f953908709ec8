"""TurboQuant codec, seed-style: `encode(x, bits="35")`, `decode(packed, head_dim, bits="35")`."""
from ._family_codecs import codec

encode, decode = codec("turboquant", "35")
