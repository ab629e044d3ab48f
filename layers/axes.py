"""Logical axis names: one vocabulary for params, another for activations.

Every param is created with ``nn.with_logical_partitioning(init, names)`` using only the param names; activations
are constrained with ``nn.with_logical_constraint`` using only the ``act_*`` names. Which mesh axis each name maps
to is decided by rules the trainer holds (``train/partitioning.py``), never here, so a module never knows how it
is sharded. Two vocabularies because a param dimension and an activation dimension of the same meaning are laid
out differently: a kernel's ``embed`` input goes to ``fsdp`` (ZeRO-3 style), while an activation's embedding stays
whole because its batch already took ``fsdp``.
"""

# -- params ------------------------------------------------------------------------------------------------------
EMBED = "embed"  # model width (hidden size or factorized embedding size)
HEADS = "heads"  # attention heads (times the head width, in fused projections)
KV = "kv"  # per-head width
MLP = "mlp"  # feed-forward inner width
VOCAB = "vocab"  # token vocabulary (and small label / type vocabularies)
LAYERS = "layers"  # stacked layer (or layer-group) index of scanned params
POSITIONS = "positions"  # rows of a position table (absolute or relative)
CANDIDATES = "candidates"  # rows of a retrieval index (evidence blocks)

PARAMS = (EMBED, HEADS, KV, MLP, VOCAB, LAYERS, POSITIONS, CANDIDATES)

# -- activations -------------------------------------------------------------------------------------------------
ACT_BATCH = "act_batch"  # examples in a batch
ACT_LENGTH = "act_length"  # sequence positions
ACT_EMBED = "act_embed"  # model width
ACT_HEADS = "act_heads"  # attention heads (or heads x head width, flattened)
ACT_KV = "act_kv"  # per-head width
ACT_MLP = "act_mlp"  # feed-forward inner width
ACT_VOCAB = "act_vocab"  # vocabulary logits

ACTIVATIONS = (ACT_BATCH, ACT_LENGTH, ACT_EMBED, ACT_HEADS, ACT_KV, ACT_MLP, ACT_VOCAB)

# A name may appear only once per array (flax rejects duplicates), so a square width -> width projection
# (pooler, factorized E -> H mapping, MLM transform) is named (EMBED, MLP): input on fsdp, output on tensor.

ALL = PARAMS + ACTIVATIONS
