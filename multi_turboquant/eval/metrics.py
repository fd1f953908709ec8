"""Teacher-forced perplexity and greedy-decode agreement of a causal LM (whatever its KV hook does)."""
from __future__ import annotations

import math
import statistics

import torch
import torch.nn.functional as F


@torch.no_grad()
def perplexity(model: torch.nn.Module, ids: torch.Tensor, window: int) -> float:
    """exp(mean next-token NLL) over consecutive windows of `window` tokens, each its own sequence."""
    if ids.dim() != 1 or ids.numel() < 2:
        raise ValueError(f"perplexity needs a 1-D tensor of at least 2 token ids, got shape {tuple(ids.shape)}")
    if window < 2:
        raise ValueError(f"window must be at least 2 tokens, got {window}")
    nll, count = 0.0, 0
    for start in range(0, ids.numel() - 1, window):
        chunk = ids[start:start + window]
        if chunk.numel() < 2:
            break
        logits = model(chunk[None], use_cache=False).logits[0, :-1]
        nll += F.cross_entropy(logits.float(), chunk[1:], reduction="sum").item()
        count += chunk.numel() - 1
    return math.exp(nll / count)


@torch.no_grad()
def greedy(model: torch.nn.Module, prompts: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """(B, P) equal-length prompts -> (B, new_tokens) greedy continuations, one KV cache per batch."""
    if prompts.dim() != 2 or new_tokens < 1:
        raise ValueError(f"greedy needs (batch, length) prompts and new_tokens >= 1, got {tuple(prompts.shape)}, "
                         f"{new_tokens}")
    out = model(prompts, use_cache=True)
    tokens = [out.logits[:, -1].argmax(-1, keepdim=True)]
    while len(tokens) < new_tokens:
        out = model(tokens[-1], past_key_values=out.past_key_values, use_cache=True)
        tokens.append(out.logits[:, -1].argmax(-1, keepdim=True))
    return torch.cat(tokens, 1)


def agreement(reference: torch.Tensor, tokens: torch.Tensor) -> tuple[float, float]:
    """(fraction of positions equal to the reference, mean position of the first difference; the
    length when a row never differs)."""
    if reference.shape != tokens.shape:
        raise ValueError(f"token shapes differ: {tuple(reference.shape)} vs {tuple(tokens.shape)}")
    same = reference == tokens
    n = same.shape[1]
    first = torch.where(same.all(1), n, (~same).int().argmax(1))
    return same.float().mean().item(), first.float().mean().item()


def prompts_from(ids: torch.Tensor, count: int, length: int) -> torch.Tensor:
    """`count` prompts of `length` tokens, starting at evenly spaced positions of ids."""
    if count < 1 or length < 1 or ids.numel() < length:
        raise ValueError(f"cannot cut {count} prompts of {length} tokens from {ids.numel()} tokens")
    starts = torch.linspace(0, ids.numel() - length, count).long()
    return torch.stack([ids[s:s + length] for s in starts.tolist()])


def delta_ppl_pct(nll: list[float], base: list[float]) -> float:
    """Perplexity increase in % of per-token NLLs `nll` over `base` (the same tokens): 100 (exp(mean - mean) - 1)."""
    if not nll or len(nll) != len(base):
        raise ValueError(f"need NLLs of the same tokens, got {len(nll)} and {len(base)}")
    return 100 * math.expm1(statistics.fmean(nll) - statistics.fmean(base))
