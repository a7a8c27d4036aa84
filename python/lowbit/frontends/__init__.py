"""Model front ends: PyTorch QAT models (:mod:`.pytorch`, ``lowbit.convert``) and
QONNX/Brevitas files (:mod:`.qonnx`, ``lowbit.from_qonnx``) are translated into
one unfused graph and lowered by the one pass pipeline of :mod:`.lowering`
(docs/pipeline.md). Neither imports torch or onnx until it runs."""
