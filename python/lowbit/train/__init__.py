"""Training side of lowbit (needs PyTorch): LSQ quantization-aware training
(:mod:`lowbit.train.qat`, also reachable as ``lowbit.qat``), the model zoo used by
the demo and benchmarks (:mod:`lowbit.train.models`) and Fashion-MNIST loading
(:mod:`lowbit.train.datasets`). Nothing here is imported by ``import lowbit``."""
