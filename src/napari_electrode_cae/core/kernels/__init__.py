"""Speed-ups behind the plain PyTorch path (the reference every kernel is tested against).

* ``routing`` with ``folded_conv`` and ``few_rows_linear``: the paper's model on CPU kernels
  (stride-2 convolutions folded into 2D ones with a hand-routed backward, the few-rows linear
  layers). ``ConvAutoEncoder3d`` takes them only where ``model.routed`` is true (its one switch,
  ``fold_depth``); every other model runs plain ``torch.nn`` layers.
* ``feeding``: batches cut on the device from a resident copy of the stacks (CUDA).
* ``train_step``: one optimiser step, replayed from a CUDA graph where that pays.
* ``allocator``: glibc malloc tuning, only on ``electrode-cae train --tune-malloc``.

Nothing here changes what is computed, only how fast; the domain modules in ``core`` read
without them.
"""
