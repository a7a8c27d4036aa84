"""lowbit's exception types, in one place.

* :class:`ConversionError` (a ``NotImplementedError``): a model uses something
  lowbit cannot convert or import; the message names every such module,
  function or node. Both front ends raise it or its subclasses
  (``lowbit.qonnx.QonnxConversionError``).
* ``lowbit.io.LowbitFormatError`` (a ``ValueError``): a model file is foreign,
  truncated, corrupted or of another format version.

Bad arguments raise ``TypeError`` / ``ValueError`` naming the argument.
"""


class ConversionError(NotImplementedError):
    """The model uses modules, functions or graph nodes lowbit cannot convert
    (all of them are listed in the message)."""


__all__ = ["ConversionError"]
