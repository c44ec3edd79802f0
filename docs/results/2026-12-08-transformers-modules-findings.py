"""By-hand check of each finding of the transformers module adapters (2026-12-08, CPU).

Each check calls the Hugging Face module directly (no adapter, no suite) on its smallest input
and compares with the float64 reference. Run: python docs/results/2026-12-08-transformers-modules-findings.py
"""

import numpy as np
import torch
from transformers.models.big_bird.modeling_big_bird import BigBirdBlockSparseAttention, BigBirdConfig, BigBirdModel
from transformers.models.longformer.modeling_longformer import LongformerConfig, LongformerSelfAttention
from transformers.models.t5.modeling_t5 import T5Attention

from attnspec.reference import relative
from attnspec.reference import sparse as sparse_ref


def t5_bucket_on_cpu():
    """T5Attention._relative_position_bucket(+-12, bidirectional, 34 buckets, max_distance 27): 11, spec 10."""
    got = T5Attention._relative_position_bucket(torch.tensor([-12, 12]), True, 34, 27).tolist()
    want = relative.t5_bucket(np.array([-12, 12]), bidirectional=True, num_buckets=34, max_distance=27).tolist()
    print("t5 bucket of -12, 12:", got, "spec:", want)


def bigbird(training: bool, n: int, block: int, r: int, heads: int = 1, d: int = 4, seed: int = 0):
    """BigBird's routine on random q, k, v; its random blocks recorded as it draws them."""
    config = BigBirdConfig(hidden_size=heads * d, num_attention_heads=heads, block_size=block, num_random_blocks=r)
    config.max_position_embeddings = n
    layer = BigBirdBlockSparseAttention(config, seed=seed).double().train(training)
    drawn = []
    for name in ("_bigbird_block_rand_mask_with_head", "_bigbird_block_rand_mask"):
        draw = getattr(layer, name)
        setattr(layer, name, lambda *a, _draw=draw, **kw: drawn.append(_draw(*a, **kw)) or drawn[-1])
    q, k, v = torch.randn(3, 1, heads, n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    blocked, band, from_mask, to_mask = BigBirdModel.create_masks_for_block_sparse_attn(
        torch.ones(1, n, dtype=torch.float64), block
    )
    out, _ = layer.bigbird_block_sparse_attention(
        q, k, v, band, from_mask, to_mask, blocked, blocked, heads, r, d, block, block, 1, n, n, seed, None, None
    )
    n_blocks = n // block
    plan = np.stack(drawn[0] if isinstance(drawn[0], list) else [x[: n_blocks - 2] for x in drawn])
    random_blocks = np.zeros((heads, n_blocks, r), np.int64)
    random_blocks[:, 1:-1] = plan
    want = sparse_ref.sparse(
        q.numpy(), k.numpy(), v.numpy(), pattern="bigbird", block=block, window_blocks=1,
        global_blocks=np.array([0, n_blocks - 1]), random_blocks=random_blocks,
    )  # fmt: skip
    err = np.abs(out.transpose(1, 2).numpy() - want).max()
    rows = np.arange(1, n_blocks - 1)[:, None]
    repeats = ((np.abs(plan - rows) <= 1) | (plan == 0) | (plan == n_blocks - 1)).any(axis=-1).sum()
    print(f"bigbird {'train' if training else 'eval'} N={n} block={block} r={r}: {repeats} block rows whose "
          f"drawn random blocks repeat a window or global block; max |out - reference| = {err:.3g}")  # fmt: skip


def longformer(w: int, n: int, dtype=torch.float64):
    """LongformerSelfAttention with identity projections, no global token: out vs the reference."""
    config = LongformerConfig(hidden_size=4, num_attention_heads=1, attention_window=[2 * w])
    layer = LongformerSelfAttention(config, layer_id=0).to(dtype).eval()
    for lin in (layer.query, layer.key, layer.value):
        torch.nn.init.eye_(lin.weight)
        torch.nn.init.zeros_(lin.bias)
    x = torch.randn(1, n, 4, dtype=dtype, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(1, n, dtype=dtype)
    try:
        (out,) = layer(x, attention_mask=mask, is_index_masked=mask < 0, is_index_global_attn=mask > 0,
                       is_global_attn=False)  # fmt: skip
    except RuntimeError as exc:
        print(f"longformer window={w} N={n}: {type(exc).__name__}: {str(exc)[:90]}")
        return
    h = x.numpy()[:, None]
    want = sparse_ref.sparse(h, h, h, pattern="longformer", window=w, global_tokens=np.zeros(n, bool))
    print(
        f"longformer window={w} N={n} {dtype}: max |out - reference| = {np.abs(out.detach().numpy()[:, None] - want).max():.3g}"
    )


def reformer(n: int, chunk_len: int, d: int = 4):
    """LSHSelfAttention, one round of 2 buckets, identity projections (qk = v = x): its rotations
    drawn under hash_seed 0 are read back by drawing them the same way."""
    from transformers.models.reformer.modeling_reformer import LSHSelfAttention, ReformerConfig

    from attnspec.reference.lsh import LSH

    config = ReformerConfig(hidden_size=d, num_attention_heads=1, attention_head_size=d, num_buckets=2, num_hashes=1,
                            lsh_attn_chunk_length=chunk_len, lsh_num_chunks_before=1, lsh_num_chunks_after=0,
                            is_decoder=False, lsh_attention_probs_dropout_prob=0.0, hash_seed=0)  # fmt: skip
    layer = LSHSelfAttention(config, layer_idx=0).double().eval()
    for lin in (layer.query_key, layer.value):
        torch.nn.init.eye_(lin.weight)
    x = torch.randn(1, n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = layer(x).hidden_states.detach().numpy()[:, None]
    torch.manual_seed(0)  # the module's own draw: torch.randn((H, D, R, n_buckets / 2)) after manual_seed(hash_seed)
    rotations = torch.randn((1, d, 1, 1), dtype=torch.float64)[0].permute(1, 0, 2).numpy()
    h = x.numpy()[:, None]
    want = LSH.build(h, h, rotations=rotations, chunk_len=chunk_len, scale=1.0).output()
    print(f"reformer N={n} chunk_len={chunk_len}: max |out - reference| = {np.abs(out - want).max():.3g}")


if __name__ == "__main__":
    t5_bucket_on_cpu()
    bigbird(training=False, n=24, block=2, r=1)  # eval: block 0 in every random slot
    bigbird(training=True, n=24, block=2, r=1)  # train, the default plan: no repeats
    bigbird(training=True, n=1024, block=64, r=3)  # train, the legacy plan of N = 1024 (max_position_embeddings 1024)
    longformer(w=1, n=4)
    longformer(w=2, n=4)  # float64 in, a float32 softmax
    reformer(n=4, chunk_len=2)
