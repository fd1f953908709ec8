"""Run a Hugging Face causal LM with its K/V stored in a chosen format: a transformers attention function
that round-trips each position once, when it enters the cache, then calls SDPA.

In a forward pass the attention function sees the layer's post-RoPE keys and values with the new
positions last (all of them without a cache; with a `DynamicCache`, the cache's own tensors). The last
`q_len` positions are replaced in place by what the decoder would read back, so a cached token is
quantized exactly once and later steps read the stored reconstruction, as a paged KV cache would.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..formats import ChannelParams
from ..formats.calibration import FAMILY_FIELDS, Calibration, for_family
from .codecs import BF16, Codec

ATTENTION_NAME = "mtq_kv"
Stream = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (B, T, heads, d), positions (T,) -> same
Observer = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None]  # (layer, q, k, v), (B, heads, T, d)


@dataclass(frozen=True)
class Scheme:
    """A row of the quality table: the key and value codec, used in every quantized layer."""

    name: str
    key: Codec
    value: Codec
    kind: str = "format"  # "format", "peer" (vLLM presets), "baseline", "pair" (K/V formats differ) or "variant"
    calibrated: bool = False
    exact_prefix: int = 0  # first positions of a sequence kept exact (not a policy the plugin carries)
    exact_recent: int = 0  # each query reads its last positions exact (KIVI-style residual; not in the plugin)

    def nbytes(self, head_dim: int) -> int:
        """K + V bytes of one head vector pair."""
        return self.key.nbytes(head_dim) + self.value.nbytes(head_dim)

    def bits(self, head_dim: int) -> float:
        """Stored bits per coordinate, K and V averaged, metadata included."""
        return 8 * self.nbytes(head_dim) / (2 * head_dim)


def _stream(codec: Codec, params: ChannelParams | None) -> Stream:
    if params is not None and params.positional:
        return lambda x, positions: codec.roundtrip(x, params, positions)
    return lambda x, positions: codec.roundtrip(x, params)


def _on_device(params: ChannelParams | None, device: torch.device | str) -> ChannelParams | None:
    """The calibration tensors moved once to the model's device (not on every call)."""
    if params is None:
        return None
    return params.map(lambda t: t.to(device))


@dataclass
class KVHook:
    """The attention function; `layers` maps a layer index to (key stream, value stream), None = as computed."""

    layers: dict[int, tuple[Stream | None, Stream | None]] = field(default_factory=dict)
    exact_prefix: int = 0
    exact_recent: int = 0  # a query at position p reads positions p-exact_recent+1..p exact (whole windows only)
    observe: Observer | None = None  # sees each layer's post-RoPE query, key and value before quantization

    def use(self, scheme: Scheme, num_layers: int, calibration: Calibration | None = None,
            keep_bf16: frozenset[int] = frozenset(), device: torch.device | str = "cpu") -> None:
        """Store every layer's K/V with `scheme` (layers in keep_bf16 as bf16), calibrated if given; the
        calibration tensors go to `device` (the model's)."""
        if calibration is not None and calibration.num_layers != num_layers:
            raise ValueError(f"calibration has {calibration.num_layers} layers, the model {num_layers}")
        self.layers, self.exact_prefix, self.exact_recent = {}, scheme.exact_prefix, scheme.exact_recent
        for i in range(num_layers):
            if i in keep_bf16:
                self.layers[i] = (_stream(BF16, None), _stream(BF16, None))
                continue
            streams = []
            pair = calibration.layer(i) if calibration is not None and scheme.calibrated else (None, None)
            for params, codec in zip(pair, (scheme.key, scheme.value)):
                params = for_family(params, codec.family) if codec.family in FAMILY_FIELDS else None
                streams.append(_stream(codec, _on_device(params, device)))
            self.layers[i] = tuple(streams)

    def __call__(self, module, query, key, value, attention_mask, **kwargs):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        if self.observe is not None:
            self.observe(module.layer_idx, query, key, value)
        total = key.shape[2]
        streams = self.layers.get(module.layer_idx, (None, None))
        recent = self.exact_recent > 0 and any(fn is not None for fn in streams)
        if recent:
            if query.shape[2] != total:
                raise ValueError("exact_recent needs whole-window passes (perplexity), not a KV cache")
            exact = key.clone(), value.clone()
        start = max(total - query.shape[2], min(self.exact_prefix, total))  # first new position to store
        for t, fn in zip((key, value), streams):
            if fn is not None and start < total:  # (B, H, T, d) -> codecs see (B, T, H, d): per-head calibration
                new = t[:, :, start:].transpose(1, 2).float()
                positions = torch.arange(start, total, device=t.device)
                t[:, :, start:] = fn(new, positions).transpose(1, 2).to(t.dtype)
        if recent:  # each query reads the stored keys up to p - r and the exact ones after: 2T keys, one mask
            mask = recent_mask(total, self.exact_recent, attention_mask, key.device)
            return _masked_attention(module, query, torch.cat((key, exact[0]), 2), torch.cat((value, exact[1]), 2),
                                     mask)
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def _masked_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      mask: torch.Tensor) -> tuple[torch.Tensor, None]:
    """softmax(q k^T * scaling, masked) v in float32 (SDPA with a boolean mask over 2T keys takes its slow path on
    the CPU); (B, T, heads, d) as transformers' attention functions return it."""
    from transformers.integrations.sdpa_attention import repeat_kv

    key, value = (repeat_kv(t, module.num_key_value_groups).float() for t in (key, value))
    scores = (query.float() @ key.transpose(-1, -2)) * module.scaling
    probs = scores.masked_fill(~mask, float("-inf")).softmax(-1)
    return (probs @ value).to(query.dtype).transpose(1, 2).contiguous(), None


def recent_mask(total: int, recent: int, attention_mask: torch.Tensor | None,
                device: torch.device | str) -> torch.Tensor:
    """(…, T, 2T) boolean mask over [stored keys, exact keys] for T causal queries: query p reads stored key j
    for j <= p - recent and exact key j for p - recent < j <= p; a boolean `attention_mask` (…, T, T) (causal,
    padding) is applied to both halves."""
    p = torch.arange(total, device=device)[:, None]
    j = torch.arange(total, device=device)[None, :]
    mask = torch.cat((j <= p - recent, (j > p - recent) & (j <= p)), -1)
    if attention_mask is None:
        return mask[None, None]
    if attention_mask.dtype != torch.bool:
        raise ValueError(f"exact_recent combines only boolean attention masks, got {attention_mask.dtype}")
    return mask & attention_mask[..., -total:].repeat(*[1] * (attention_mask.dim() - 1), 2)


@dataclass
class LoadedModel:
    tokenizer: object
    model: torch.nn.Module
    hook: KVHook
    path: Path

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def num_layers(self) -> int:
        return self.model.config.num_hidden_layers

    @property
    def num_kv_heads(self) -> int:
        return self.model.config.num_key_value_heads

    @property
    def head_dim(self) -> int:
        c = self.model.config
        return getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads


def default_device() -> str:
    """"cuda" where a GPU is visible, else "cpu"."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: torch.device | str) -> torch.device:
    """torch.device(device), ValueError when it is not a device name or not present here."""
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"bad device {device!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: no CUDA GPU is visible to torch {torch.__version__}")
    return dev


def load_model(path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> LoadedModel:
    """A local Hugging Face causal-LM folder in `dtype` on `device` with the KV hook installed (never a hub
    download)."""
    p = Path(path).expanduser()
    device = check_device(device)
    if not (p / "config.json").is_file():
        raise ValueError(f"{str(p)!r} is not a Hugging Face model folder (no config.json)")
    try:
        from transformers import AttentionInterface, AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        raise ValueError(f"mtq eval quality needs transformers: {e}") from None
    hook = KVHook()
    AttentionInterface.register(ATTENTION_NAME, hook)  # one active hook per process: the latest load
    tok = AutoTokenizer.from_pretrained(p, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(p, dtype=dtype, attn_implementation=ATTENTION_NAME,
                                                 local_files_only=True)
    return LoadedModel(tok, model.to(device).eval(), hook, p)
