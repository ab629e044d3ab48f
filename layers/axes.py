"""Logical axis names: the single vocabulary for params and activations.

Every param is created with ``nn.with_logical_partitioning(init, names)`` using only these names; activations are
constrained with ``nn.with_logical_constraint``. Which mesh axis each name maps to is decided by rules in
``configs/``, never here, so a module never knows how it is sharded.
"""

BATCH = "batch"  # examples in a batch
LENGTH = "length"  # sequence positions
EMBED = "embed"  # model width (hidden size or factorized embedding size)
HEADS = "heads"  # attention heads
KV = "kv"  # per-head width
MLP = "mlp"  # feed-forward inner width
VOCAB = "vocab"  # token vocabulary (and small label / type vocabularies)
LAYERS = "layers"  # stacked layer (or layer-group) index of scanned params
CANDIDATES = "candidates"  # retrieval candidates / documents
BLOCKS = "blocks"  # chunks of a sequence (local / LSH attention)

# A name may appear only once per array (flax rejects duplicates), so a square width -> width projection
# (pooler, factorized E -> H mapping, MLM transform) is named (EMBED, MLP): input on fsdp, output on tensor.

ALL = (BATCH, LENGTH, EMBED, HEADS, KV, MLP, VOCAB, LAYERS, CANDIDATES, BLOCKS)
