"""The KV-cache format interface shared by all six formats: validation, calibration, chunking."""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from .codebooks import SCALE_CANDIDATES, dequantize, quantize_scaled
from .params import ChannelParams
from .transforms import tree_sum

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MIN_HEAD_DIM, MAX_HEAD_DIM, HEAD_DIM_MULTIPLE = 16, 512, 16
CHUNK_ROWS = 1 << 15


CALIBRATION_OVERFLOW = "input is not finite after calibration: (x - offset) / scale overflows float32"

class KVFormat(ABC):
    """One packed KV-cache format: `encode` (..., d) floats -> (..., nbytes) uint8 and back."""

    name: str
    family: str
    bits: float  # payload bits per coordinate
    flag_byte: int  # the byte holding the sign bit of the record's (non-negative) scale, counted from the end

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    # -- sizes -----------------------------------------------------------------------------------
    def supports(self, head_dim: int) -> bool:
        return MIN_HEAD_DIM <= head_dim <= MAX_HEAD_DIM and head_dim % HEAD_DIM_MULTIPLE == 0

    def check_head_dim(self, head_dim: int) -> None:
        if not isinstance(head_dim, int) or not self.supports(head_dim):
            raise ValueError(
                f"{self.name}: unsupported head_dim {head_dim!r}; supported: multiples of "
                f"{HEAD_DIM_MULTIPLE} from {MIN_HEAD_DIM} to {MAX_HEAD_DIM} (e.g. 64, 96, 128, 256)"
            )

    def bytes_per_vector(self, head_dim: int) -> int:
        """Packed bytes of one head vector (payload + metadata)."""
        self.check_head_dim(head_dim)
        return self._bytes_per_vector(head_dim)

    def bits_per_coordinate(self, head_dim: int) -> float:
        """Total stored bits per coordinate, metadata included."""
        return 8 * self.bytes_per_vector(head_dim) / head_dim

    # -- codec -----------------------------------------------------------------------------------
    def encode(self, x: torch.Tensor, params: ChannelParams | None = None) -> torch.Tensor:
        """Encode (..., head_dim) fp16/bf16/fp32 vectors to (..., bytes_per_vector) uint8.

        Raises ValueError for an unsupported dtype or head_dim, NaN/Inf input (also after calibration), or bad
        params.
        """
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{self.name}: expected a torch.Tensor, got {type(x).__name__}")
        if x.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"{self.name}: unsupported input dtype {x.dtype}; expected float16, bfloat16 or float32")
        if x.dim() == 0:
            raise ValueError(f"{self.name}: input must have a head_dim axis, got a scalar")
        head_dim = x.shape[-1]
        nbytes = self.bytes_per_vector(head_dim)
        if not torch.isfinite(x).all():
            raise ValueError(f"{self.name}: input contains NaN or Inf")
        params = self._resolved(params, head_dim)
        lead = x.shape[:-1]
        x = x.to(torch.float32)
        canon = self.to_canonical(x, params, head_dim).reshape(-1, head_dim)
        flag = None
        if params.centroid is not None:  # nearer the centroid (strictly, by tree sums of squares): relative to it
            alt = self.to_canonical(x, params.recentered(), head_dim).reshape(-1, head_dim)
            flag = tree_sum(alt * alt) < tree_sum(canon * canon)
            canon = torch.where(flag, alt, canon)
        if not torch.isfinite(canon).all():  # finite input that (x - offset) / scale takes past float32's range
            raise ValueError(f"{self.name}: {CALIBRATION_OVERFLOW}")
        out = torch.empty(canon.shape[0], nbytes, dtype=torch.uint8, device=x.device)
        for start in range(0, canon.shape[0], CHUNK_ROWS):
            out[start:start + CHUNK_ROWS] = self._encode_rows(canon[start:start + CHUNK_ROWS])
        if flag is not None:
            out[:, nbytes - self.flag_byte] |= flag[:, 0].to(torch.uint8) << 7
        return out.reshape(*lead, nbytes)

    def decode(
        self,
        packed: torch.Tensor,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        params: ChannelParams | None = None,
    ) -> torch.Tensor:
        """Decode (..., bytes_per_vector) uint8 back to (..., head_dim) vectors of `dtype`."""
        nbytes = self.bytes_per_vector(head_dim)
        if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8:
            got = packed.dtype if isinstance(packed, torch.Tensor) else type(packed).__name__
            raise ValueError(f"{self.name}: packed data must be a uint8 tensor, got {got}")
        if packed.dim() == 0 or packed.shape[-1] != nbytes:
            shape = tuple(packed.shape)
            raise ValueError(f"{self.name}: packed last dim must be {nbytes} bytes at head_dim {head_dim}, got {shape}")
        if dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"{self.name}: unsupported output dtype {dtype}; expected float16, bfloat16 or float32")
        params = self._resolved(params, head_dim)
        lead = packed.shape[:-1]
        rows = packed.reshape(-1, nbytes)
        # the scale's sign bit flags a record stored relative to the centroid; like the offset and scale, it means
        # something only with the calibration the record was encoded with (without a centroid it is ignored)
        flag = rows[:, nbytes - self.flag_byte] >= 0x80
        rows = rows.clone()
        rows[:, nbytes - self.flag_byte] &= 0x7F
        out = torch.empty(rows.shape[0], head_dim, dtype=torch.float32, device=packed.device)
        for start in range(0, rows.shape[0], CHUNK_ROWS):
            out[start:start + CHUNK_ROWS] = self._decode_rows(rows[start:start + CHUNK_ROWS], head_dim)
        out = out.reshape(*lead, head_dim)
        if params.centroid is None:
            out = self.from_canonical(out, params, head_dim)
        else:
            out = torch.where(flag.reshape(*lead, 1), self.from_canonical(out, params.recentered(), head_dim),
                              self.from_canonical(out, params, head_dim))
        limit = torch.finfo(dtype).max  # a reconstruction may overshoot the input's largest value
        return out.clamp(-limit, limit).to(dtype)

    # -- calibration hooks -----------------------------------------------------------------------
    def _resolved(self, params: ChannelParams | None, head_dim: int) -> ChannelParams:
        """Checked params with a plain offset: a position-dependent one must be resolved by `params.at(positions)`."""
        params = self._check_params(params, head_dim)
        if params.positional:
            raise ValueError(f"{self.name}: a position_offset needs the vectors' positions: pass params.at(positions)")
        return params

    def _check_params(self, params: ChannelParams | None, head_dim: int) -> ChannelParams:
        params = params or ChannelParams()
        params.validate(self.name, head_dim)
        return params

    def to_canonical(self, x: torch.Tensor, params: ChannelParams, head_dim: int) -> torch.Tensor:
        """Calibration transform before encoding: (x - offset) / scale."""
        if params.offset is not None:
            x = x - params.offset.to(x.device)
        if params.scale is not None:
            x = x / params.scale.to(x.device)
        return x

    def from_canonical(self, x: torch.Tensor, params: ChannelParams, head_dim: int) -> torch.Tensor:
        """Inverse of `to_canonical` after decoding."""
        if params.scale is not None:
            x = x * params.scale.to(x.device)
        if params.offset is not None:
            x = x + params.offset.to(x.device)
        return x

    # -- per format --------------------------------------------------------------------------------
    @abstractmethod
    def _bytes_per_vector(self, head_dim: int) -> int: ...

    @abstractmethod
    def _encode_rows(self, x: torch.Tensor) -> torch.Tensor:
        """(rows, d) float32 in canonical space -> (rows, nbytes) uint8."""

    @abstractmethod
    def _decode_rows(self, packed: torch.Tensor, head_dim: int) -> torch.Tensor:
        """(rows, nbytes) uint8 -> (rows, d) float32 in canonical space."""


def scalar_quantize(y: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd-Max codes of y at the best of SCALE_CANDIDATES x unit RMS, and the least-squares scale.

    y: (rows, n) float32. For each candidate scale c, codes = nearest levels of y*sqrt(n/S)/c and
    alpha = <y,c>/<c,c>; the candidate with the largest <y,c>^2/<c,c> (the smallest residual) wins,
    the first on ties. Returns codes (rows, n) uint8 and alpha (rows, 1) float32; an all-zero row
    gets alpha 0, so it decodes to zeros.
    """
    sq = tree_sum(y * y)
    best_gain = best_codes = best_alpha = None
    for candidate in range(len(SCALE_CANDIDATES)):
        codes = quantize_scaled(y, sq, bits, candidate)
        c = dequantize(codes, bits)
        num, den = tree_sum(y * c), tree_sum(c * c)
        gain, alpha = num * num / den, num / den
        if best_gain is None:
            best_gain, best_codes, best_alpha = gain, codes, alpha
            continue
        better = gain > best_gain
        best_gain = torch.where(better, gain, best_gain)
        best_codes = torch.where(better, codes, best_codes)
        best_alpha = torch.where(better, alpha, best_alpha)
    return best_codes, best_alpha


def _exp2_int(k: torch.Tensor) -> torch.Tensor:
    """2.0**k as float32 for int32 k in [-126, 127], built from its bits (exact on every device)."""
    return ((k + 127) << 23).to(torch.int32).view(torch.float32)


def scale_by_power_of_two(x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """x * 2**e for int32 e (rows, 1) in [-252, 254] (each half within _exp2_int's range), as two
    exact multiplications by powers of two; frexp exponents of float32 lie in [-148, 128]."""
    half = torch.div(e, 2, rounding_mode="floor")
    return x * _exp2_int(half) * _exp2_int(e - half)


def power_of_two_normalize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x * 2**-e per row, e the frexp exponent of max |x| (so max |x| lands in [0.5, 1)), and e.

    The codecs are scale-equivariant, so encoding the normalized rows gives the same codes, and the
    stored scales times 2**e the same bytes, while squares neither overflow (|x| > 1e18) nor
    underflow (|x| < 1e-19, subnormal inputs) in float32.
    """
    e = torch.frexp(x.abs().amax(-1, keepdim=True)).exponent.to(torch.int32)
    return scale_by_power_of_two(x, -e), e


def bf16_bytes(v: torch.Tensor) -> torch.Tensor:
    """(rows, 1) float32 >= 0 -> (rows, 2) uint8: bfloat16, round to nearest even (at most bfloat16's
    largest finite value, never inf), little-endian."""
    return v.clamp(max=torch.finfo(torch.bfloat16).max).to(torch.bfloat16).contiguous().view(torch.uint8)


def bf16_sqrt(s: torch.Tensor) -> torch.Tensor:
    """sqrt(s) for s >= 0 rounded to bfloat16 (nearest, ties to even), exact on every device.

    torch.sqrt may be one float32 ulp off on some devices; the bf16 neighbours of its rounding are
    checked against s with squared midpoints, which float32 holds exactly (<= 18 significant bits).
    Returns float32 values that are bf16-representable.
    """
    r = torch.sqrt(s).to(torch.bfloat16).view(torch.int16)
    cand = torch.stack((r - 1, r, r + 1), dim=-1).clamp_min(0)  # positive bf16 bit patterns
    val = cand.view(torch.bfloat16).to(torch.float32)
    lo_mid = (val[..., 0] + val[..., 1]) * 0.5
    hi_mid = (val[..., 1] + val[..., 2]) * 0.5
    even = (cand[..., 1] & 1) == 0
    up = (s > hi_mid * hi_mid) | ((s == hi_mid * hi_mid) & ~even)
    down = (s < lo_mid * lo_mid) | ((s == lo_mid * lo_mid) & ~even)
    return torch.where(up, val[..., 2], torch.where(down, val[..., 0], val[..., 1]))


def bf16_from_bytes(b: torch.Tensor) -> torch.Tensor:
    """(rows, 2) uint8 -> (rows, 1) float32."""
    flat = b.reshape(-1).clone()  # fresh storage: 2-byte aligned whatever the slice's offset
    return flat.view(torch.bfloat16).reshape(b.shape[0], 1).to(torch.float32)
