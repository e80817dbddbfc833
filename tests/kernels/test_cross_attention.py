"""Cross-attention over kept text keys (trdq.kernels.cross_attention) on CPU: moving the kept
keys first and attending over the first ``used`` is the masked attention SDPA computes with
diffusers' additive bias, for masks that are not a prefix too."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trdq.kernels.cross_attention import kept_keys_first, prefix_attention_reference


def _qkv(batch=3, tokens=7, keys=11, heads=2, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, n, heads, dim, generator=g) for n in (tokens, keys, keys))


def _masked_sdpa(q, k, v, keep):
    """diffusers' way: -10000 added to the logits of dropped keys."""
    bias = (~keep).float()[:, None, None, :] * -10000.0
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                         v.transpose(1, 2), attn_mask=bias)
    return out.transpose(1, 2)


def test_kept_keys_come_first_in_their_order():
    k = torch.arange(5.0).view(1, 5, 1, 1).expand(2, 5, 1, 1).contiguous()
    keep = torch.tensor([[False, True, False, True, True], [True, True, True, True, True]])
    k2, v2, used = kept_keys_first(k, k * 10, keep)
    assert used.tolist() == [3, 5] and used.dtype == torch.int32
    assert k2[0, :3, 0, 0].tolist() == [1.0, 3.0, 4.0]
    assert k2[1, :, 0, 0].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert torch.equal(v2, k2 * 10)  # values travel with their keys


def test_attention_over_the_kept_prefix_is_the_masked_attention():
    q, k, v = _qkv()
    keep = torch.tensor([[True] * 4 + [False] * 7,  # a prefix, as a tokenizer pads
                         [False, True] * 5 + [True],  # scattered
                         [True] * 11])  # no padding
    ref = prefix_attention_reference(q, k, v, keep)
    assert torch.allclose(ref, _masked_sdpa(q, k, v, keep), atol=1e-5)
    # a mask that drops nothing: plain attention
    assert torch.allclose(prefix_attention_reference(q, k, v, None),
                          _masked_sdpa(q, k, v, torch.ones(3, 11, dtype=torch.bool)), atol=1e-5)


def test_a_wrong_count_would_show():
    """The check above can fail: attending over one key too many differs."""
    q, k, v = _qkv(seed=1)
    keep = torch.tensor([[True] * 4 + [False] * 7] * 3)
    wider = keep.clone()
    wider[:, 4] = True
    assert not torch.allclose(prefix_attention_reference(q, k, v, wider),
                              _masked_sdpa(q, k, v, keep), atol=1e-3)
