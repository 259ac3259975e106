"""The fast path's tunables and the reference passes' BatchNorm rule: the one place to set them.

Both are read at call time by the modules of :mod:`cluctl.grads`, so a test or a benchmark
changes them here (``cluctl.grads.options.FAST_OPTIONS["channels_last"] = False``,
``cluctl.grads.options.REF_BN_UPDATE = False``); ``cluctl.grads.REF_BN_UPDATE = ...`` is
forwarded here too (the package's properties).
"""

# Tunables of the fast path (benchmarks flip them; the defaults are the measured best).
#   channels_last: None = on for 4-D inputs on every device, True/False to force.
#   dense_small_conv: convolutions over maps with fewer pixels than kernel taps as one GEMM
#             with the unrolled convolution matrix (exact; skips the zero-padding products).
#   chunk_mb: bound on the activations of one grouped pass (tasks are processed in chunks);
#             None = $CLUCTL_REF_CHUNK_MB, else 1500 MB on CPU and 12000 MB on CUDA (the
#             full-scale CIFAR step, 19 x 256 memories, needs about 7.5 GB in float32).
#   cuda_graphs: on CUDA, capture the grouped pass of one operation's fixed buffers as a CUDA
#             graph and replay it at every later step (see GraphedRefGrads); None = on unless
#             $CLUCTL_CUDA_GRAPHS=0, True/False to force.
#   cudnn_benchmark: on CUDA, let cuDNN time its algorithms for the grouped pass's shapes
#             (torch.backends.cudnn.benchmark, set only around that pass; off by default:
#             not yet measured, see benchmarks/bench_step.py's fast-cudnnbench).
FAST_OPTIONS: dict = {"channels_last": None, "dense_small_conv": True, "chunk_mb": None, "cuda_graphs": None,
                      "cudnn_benchmark": False}

# Do the reference-gradient passes update BatchNorm's running statistics (SPEC §2: yes)?
# Only benchmarks flip this, to measure the earlier behaviour (False) side by side.
REF_BN_UPDATE = True
