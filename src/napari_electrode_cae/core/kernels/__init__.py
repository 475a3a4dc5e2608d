"""Speed-ups behind the plain PyTorch path (the reference every kernel is tested against).

* ``folded_conv`` and ``few_rows_linear``: CPU kernels for the paper's model (stride-2
  convolutions folded into matrix products, the few-rows linear layers, a hand-routed backward).
  ``ConvAutoEncoder3d`` takes them only where ``model.routed`` is true; every other model runs
  plain ``torch.nn`` layers.
* ``feeding``: batches cut on the device from a resident copy of the stacks (CUDA).
* ``train_step``: one optimiser step, replayed from a CUDA graph where that pays.

Nothing here changes what is computed, only how fast; the domain modules in ``core`` read
without them.
"""
