"""The model runtime: :class:`lowbit.Model` and its graph (:mod:`.model`), the
native whole-graph executor (:mod:`.executor`, docs/runtime.md), the model file
format (:mod:`.io`) and the float32 layers of imported models (:mod:`.floatops`).
NumPy only."""
from .model import OPS, CodeTensor, Model, Node, NodeArrays, PackedCodes

__all__ = ["CodeTensor", "Model", "Node", "NodeArrays", "OPS", "PackedCodes"]
