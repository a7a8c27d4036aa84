"""PyTorch QAT model -> :class:`lowbit.Model` (needs torch; the result does not).

``m = lowbit.convert(qat, example_input)`` where ``qat`` comes from
:func:`lowbit.qat.prepare` (and was trained or at least calibrated: every LSQ
quantizer must be initialised).

``torch.fx`` traces ``qat`` (QConv2d / QLinear as leaves) and runs the example
input once (eval mode) for shapes and the exact LSQ steps. This module only
translates fx nodes into unfused runtime nodes (a ``quantize`` + ``conv`` /
``linear`` per quantized layer, ``affine`` for BatchNorm, ``add``, ``clamp``,
pooling, flatten); :func:`lowbit.lowering.lower`, shared with the QONNX
importer, fuses them. docs/pipeline.md (section 1) has the full mapping.
Anything unsupported raises ``ConversionError`` naming every such op.

Input size: the batch size is free. The channel count must match
``example_input``. The spatial size is free when every flatten reads a global
pooling's 1x1 output; otherwise (flatten of an HxW map, fixed-size pooling
before flatten) it must equal ``example_input``'s, which ``Model`` checks
(``m.spatial_fixed``).
"""
from __future__ import annotations

import operator

import numpy as np

from ..errors import ConversionError
from .lowering import batchnorm_affine, layer_node, lower, quantize_node, unique_name
from ..quant import UniformGrid
from ..runtime.model import Model, Node

__all__ = ["convert", "compare", "ConversionError"]

_POOLS = ("maxpool", "avgpool", "adaptive_avgpool")
# Tensor methods -> kinds ("view": view/reshape, a flatten when its shape is (B, -1))
_METHOD_KINDS = {**dict.fromkeys(("relu", "relu_", "clamp", "clamp_", "clip", "clip_"), "act"), "add": "add",
                 "add_": "add", "flatten": "flatten", "view": "view", "reshape": "view", "size": "size",
                 "mean": "mean", **dict.fromkeys(("contiguous", "detach", "clone"), "alias")}


def _arg_of(n, module=None):
    """arg(i, key, default): fx node n's argument by position i, else keyword key, else default;
    for a call of ``module``, its attribute key (modules name them as the functional forms do)."""
    if module is not None:
        return lambda i, key, default: getattr(module, key, default)
    return lambda i, key, default: n.args[i] if len(n.args) > i else n.kwargs.get(key, default)


def _origin(n) -> str:
    """The name an fx node's lowbit node is built from: the module path, or the fx node's name."""
    return str(n.target) if n.op == "call_module" else n.name


def _torch():
    try:
        import torch
    except ImportError as exc:  # pragma: no cover
        raise ImportError("lowbit.convert needs PyTorch (pip install torch); the converted model does not") from exc
    return torch


def _pair(v):
    v = list(v) if isinstance(v, (tuple, list)) else [v]
    return [int(v[0]), int(v[1 if len(v) > 1 else 0])]


class _Converter:
    def __init__(self, qat, example_input, requant_in_epilogue=True):
        torch = _torch()
        from torch import fx, nn
        import torch.nn.functional as F

        from ..train import qat as qatmod

        self.torch, self.nn, self.F, self.fx, self.qatmod = torch, nn, F, fx, qatmod
        self.Q = (qatmod.QConv2d, qatmod.QLinear)
        self.LSQ = qatmod.LsqQuantizer
        self.qat = qat
        self.requant = requant_in_epilogue
        if not isinstance(example_input, torch.Tensor):
            example_input = torch.as_tensor(np.asarray(example_input, dtype=np.float32))
        if example_input.dim() != 4:
            raise ValueError(f"example_input: expected a 4-D NCHW batch, got shape {tuple(example_input.shape)}")
        self.example = example_input.detach().float()
        self.modules = dict(qat.named_modules())

    # ---- tracing -----------------------------------------------------------------------------
    def trace(self):
        fx, Q, LSQ = self.fx, self.Q, self.LSQ
        try:
            self.graph = self.qatmod._trace(self.qat)
        except Exception as exc:
            raise ConversionError(f"lowbit.convert: torch.fx could not trace the model "
                                  f"({type(exc).__name__}: {exc})") from exc
        self.check_supported()
        uninit = [n for n, m in self.modules.items() if isinstance(m, LSQ) and not bool(m.initialized)]
        if uninit:
            raise ValueError("lowbit.convert: these LSQ quantizers are not initialised (train or run a "
                             "calibration batch through the QAT model first): " + ", ".join(uninit))
        gm = fx.GraphModule(self.qat, self.graph)
        shapes, layer_inputs = {}, {}
        torch, Qt = self.torch, Q

        class _Rec(fx.Interpreter):
            def run_node(self, n):
                out = super().run_node(n)
                shapes[n] = tuple(out.shape) if isinstance(out, torch.Tensor) else None
                if n.op == "call_module" and isinstance(self.module.get_submodule(n.target), Qt):
                    layer_inputs[n] = self.fetch_args_kwargs_from_env(n)[0][0]
                return out

        was_training = self.qat.training
        self.qat.eval()
        try:
            with torch.no_grad():
                _Rec(gm).run(self.example)
        except Exception as exc:   # the model does not run on example_input (wrong channels, too small)
            raise ValueError(f"lowbit.convert: the model fails on example_input of shape "
                             f"{tuple(self.example.shape)} ({type(exc).__name__}: {str(exc).splitlines()[0]})") from exc
        finally:
            self.qat.train(was_training)
        self.shapes, self.layer_inputs = shapes, layer_inputs

    # ---- support check -----------------------------------------------------------------------
    def _classify(self, n):
        """A short kind string for supported fx nodes, None for unsupported ones."""
        nn, F, torch = self.nn, self.F, self.torch
        if n.op in ("placeholder", "output"):
            return n.op
        if n.op == "call_module":
            m = self.modules[n.target]
            if isinstance(m, self.Q):
                return "quantized"
            if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                return "bn" if m.track_running_stats and m.running_mean is not None else None
            if isinstance(m, (nn.ReLU, nn.ReLU6, nn.Hardtanh)):
                return "act"
            if isinstance(m, nn.MaxPool2d):
                return "maxpool" if not m.ceil_mode and not m.return_indices else None
            if isinstance(m, nn.AvgPool2d):
                return "avgpool" if not m.ceil_mode and m.divisor_override is None else None
            if isinstance(m, nn.AdaptiveAvgPool2d):
                return "adaptive_avgpool"
            if isinstance(m, nn.Flatten):
                return "flatten" if m.start_dim == 1 and m.end_dim == -1 else None
            if isinstance(m, (nn.Identity, nn.Dropout, nn.Dropout2d)):
                return "alias"
            return None
        if n.op == "call_function":
            t = n.target
            kind = {F.relu: "act", torch.relu: "act", F.relu6: "act", F.hardtanh: "act", torch.clamp: "act",
                    torch.clip: "act", operator.add: "add", operator.iadd: "add", torch.add: "add",
                    torch.flatten: "flatten", F.adaptive_avg_pool2d: "adaptive_avgpool", F.max_pool2d: "maxpool",
                    F.avg_pool2d: "avgpool", F.dropout: "alias"}.get(t) if callable(t) else None
        elif n.op == "call_method":
            kind = _METHOD_KINDS.get(n.target)
        else:
            return None
        # kinds supported only in some forms: None for the others
        if kind == "add":
            return kind if len(n.args) == 2 and not n.kwargs else None
        if kind == "flatten":
            return kind if self._flatten_ok(n) else None
        if kind == "view":
            return "flatten" if self._view_is_flatten(n) else None
        if kind == "size":  # read only by a view/reshape (batch size of a flatten)
            return kind if all(u.op == "call_method" and u.target in ("view", "reshape") for u in n.users) else None
        if kind == "mean":
            return kind if self._mean_ok(n) else None
        return kind

    @staticmethod
    def _flatten_ok(n):
        arg = _arg_of(n)
        return arg(1, "start_dim", 0) == 1 and arg(2, "end_dim", -1) == -1

    def _view_is_flatten(self, n):
        """view/reshape to (B, -1): B is x.size(0) or the example's batch size as a constant (any
        other constant moves samples between rows)."""
        shape = list(n.args[1:])
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = list(shape[0])
        if len(shape) != 2 or shape[1] != -1:
            return False
        first = shape[0]
        return first == self.example.shape[0] if isinstance(first, int) else \
            (getattr(first, "op", None) == "call_method" and first.target == "size" and tuple(first.args[1:]) == (0,))

    @staticmethod
    def _mean_ok(n):
        dim = _arg_of(n)(1, "dim", None)
        if not isinstance(dim, (tuple, list)):
            return False
        return sorted(d % 4 for d in dim) == [2, 3] and not n.kwargs.get("dtype")

    def _mutated_input(self, n):
        """The fx node whose memory a supported in-place op ``n`` writes (``relu_``, ``clamp_``,
        ``add_``, ``x += y``, ``inplace=True`` activations), else None."""
        if self.kinds.get(n) not in ("act", "add"):
            return None
        if n.op == "call_module":
            inplace = bool(getattr(self.modules[n.target], "inplace", False))
        elif n.op == "call_method":
            inplace = n.target.endswith("_")
        elif n.target is operator.iadd:
            inplace = True
        elif n.target in (self.F.relu, self.F.relu6, self.F.hardtanh):   # (x, inplace), (x, min, max, inplace)
            inplace = bool(_arg_of(n)(3 if n.target is self.F.hardtanh else 1, "inplace", False))
        else:
            inplace = False
        return n.args[0] if inplace and isinstance(n.args[0], self.fx.Node) else None

    def _stale_after_inplace(self):
        """The translation gives every fx node its own value, but an in-place op changes the
        memory of its input and of everything sharing it (views: flatten/view/reshape,
        Identity/Dropout/contiguous/detach, earlier in-place results). A node that reads such
        a value after the op would see the modified memory in torch: described here (refused)."""
        order = {n: i for i, n in enumerate(self.graph.nodes)}
        shares = {}   # fx node -> the first node of its memory
        for n in self.graph.nodes:
            src = n.args[0] if n.args and isinstance(n.args[0], self.fx.Node) else None
            view = self.kinds.get(n) in ("alias", "flatten") and not (n.op == "call_method" and n.target == "clone")
            shares[n] = shares.get(src, src) if src is not None and (view or self._mutated_input(n) is not None) \
                else n
        found = []
        for n in self.graph.nodes:
            v = self._mutated_input(n)
            if v is None:
                continue
            before = [m for m in self.graph.nodes if order[m] < order[n] and shares[m] is shares[v]]
            late = [u for m in before for u in m.users if order[u] > order[n]]
            if late:
                found.append(f"in-place {self._describe(n)} modifies '{v.name}', which node "
                             f"'{min(late, key=order.get).name}' reads afterwards (use the out-of-place form)")
        return found

    def _describe(self, n):
        if n.op == "call_module":
            m = self.modules[n.target]
            name = type(m).__name__
            if isinstance(m, (self.nn.Conv2d, self.nn.Linear)):
                name += " (not quantized: prepare the model with lowbit.qat.prepare)"
            elif isinstance(m, (self.nn.BatchNorm2d, self.nn.BatchNorm1d)):
                name += " (without running statistics)"
            elif isinstance(m, self.LSQ):
                name += " (a standalone quantizer outside QConv2d/QLinear)"
            elif isinstance(m, (self.nn.MaxPool2d, self.nn.AvgPool2d, self.nn.Flatten)):
                name += f" ({m.extra_repr()}: unsupported options)"
            return f"module '{n.target}' ({name})"
        if n.op == "call_function":
            t = n.target
            fname = f"{getattr(t, '__module__', '') or ''}.{getattr(t, '__name__', repr(t))}".lstrip(".")
            return f"function {fname} (node '{n.name}')"
        if n.op == "call_method":
            return f"method Tensor.{n.target} (node '{n.name}')"
        if n.op == "get_attr":
            return f"parameter/buffer access '{n.target}' (node '{n.name}')"
        return f"{n.op} '{n.name}'"

    def check_supported(self):
        bad, inputs = [], 0
        self.kinds = {}
        for n in self.graph.nodes:
            k = self._classify(n)
            if k is None:
                bad.append(self._describe(n))
            elif k == "placeholder":
                inputs += 1
            self.kinds[n] = k
        if inputs != 1:
            bad.append(f"{inputs} graph inputs (exactly one NCHW tensor input is supported)")
        bad += self._stale_after_inplace()
        if bad:
            seen = list(dict.fromkeys(bad))
            raise ConversionError("lowbit.convert: unsupported operations in the model:\n  - " + "\n  - ".join(seen)
                                  + "\nSupported: QConv2d, QLinear, BatchNorm, ReLU/ReLU6/Hardtanh/clamp, tensor "
                                  "add, max/avg/adaptive-avg pooling, mean over H,W, flatten/view(B, -1), "
                                  "Identity, Dropout.")

    # ---- graph building ----------------------------------------------------------------------
    def uname(self, base):
        return unique_name(base, self.names)

    def add_node(self, node):
        self.nodes.append(node)
        return node.name

    def build(self):
        self.nodes, self.env, self.quantizers, self.names = [], {}, {}, set()
        out_val = None
        for n in self.graph.nodes:
            k = self.kinds[n]
            if k == "placeholder":
                b, c, h, w = self.example.shape
                self.env[n] = self.add_node(Node(self.uname("input"), "input", [],
                                                 {"channels": int(c), "height": int(h), "width": int(w)}))
            elif k == "output":
                arg = n.args[0]
                if not isinstance(arg, self.fx.Node):
                    raise ConversionError("lowbit.convert: the model must return a single tensor")
                out_val = self.env[arg]
            elif k == "alias":
                self.env[n] = self.env[n.args[0]]
            elif k == "size":
                pass
            else:
                self._pool(n, k) if k in _POOLS else getattr(self, "_op_" + k)(n)
        self.finish(out_val)

    def _src(self, n, i=0):
        a = n.args[i] if len(n.args) > i else None
        if a is None or not isinstance(a, self.fx.Node):
            raise ConversionError(f"lowbit.convert: node '{n.name}' has no tensor input")
        return a

    def _op_quantized(self, n):
        torch = self.torch
        m = self.modules[n.target]
        src = self._src(n)
        aq, wq = m.act_quant, m.weight_quant
        if aq.per_channel:
            raise ConversionError(f"lowbit.convert: '{n.target}': per-channel activation quantizers are not "
                                  "supported")
        x_in = self.layer_inputs[n]
        _, levels, a_step = aq.codes(x_in)
        wcodes, wlevels, w_step = wq.codes(m.weight.detach())
        a_step = float(a_step.reshape(-1)[0])
        cout = m.weight.shape[0]
        w_step = np.broadcast_to(w_step.detach().double().cpu().numpy().reshape(-1), (cout,)).astype(np.float64)
        for what, step in (("act_quant", a_step), ("weight_quant", w_step)):
            bad = np.asarray(step, np.float64).reshape(-1)
            bad = bad[~np.isfinite(bad)]
            if bad.size:
                raise ValueError(f"lowbit.convert: '{n.target}.{what}' has a non-finite step {bad[0]} "
                                 "(it was initialised from or trained on non-finite values)")
        wcodes = wcodes.cpu().numpy().astype(np.uint8)
        scale = np.float64(a_step) * w_step
        bias = (m.bias.detach().double().cpu().numpy() if m.bias is not None else np.zeros(cout))
        attrs = {"module": n.target, "source": f"{n.target} ({type(m).__name__})"}
        if isinstance(m, torch.nn.Conv2d):
            if isinstance(m.padding, str):
                if m.padding == "valid":
                    pad = [0, 0]
                else:
                    tot = [d * (k - 1) for d, k in zip(m.dilation, m.kernel_size)]
                    if any(t % 2 for t in tot) or any(s != 1 for s in m.stride):
                        raise ConversionError(f"lowbit.convert: '{n.target}': padding='same' needs "
                                              "asymmetric padding here, which is not supported")
                    pad = [t // 2 for t in tot]
            else:
                pad = _pair(m.padding)
            attrs.update(stride=_pair(m.stride), padding=pad, dilation=_pair(m.dilation), groups=int(m.groups))
            op = "conv"
        else:
            if len(self.shapes.get(src) or ()) != 2:
                raise ConversionError(f"lowbit.convert: '{n.target}': QLinear on a "
                                      f"{len(self.shapes.get(src) or ())}-D input is not supported (flatten first)")
            op = "linear"
        name = self.uname(n.target if n.target not in {x.name for x in self.nodes} else n.name)
        # one quantize node per (value, activation quantizer): layers reading the same codes share it
        key = (self.env[src], int(aq.bits), bool(aq.signed), bool(aq.binary_signed), np.float32(a_step).tobytes())
        if key not in self.quantizers:
            grid = UniformGrid(a_step, aq.qn, aq.qp, aq.binary_signed, aq.signed)
            self.quantizers[key] = self.add_node(quantize_node(self.uname(f"{name}.quant"), self.env[src], grid))
        self.env[n] = self.add_node(layer_node(name, op, self.quantizers[key], aq.bits, levels, a_step, wq.bits,
                                               wlevels, wcodes, scale, bias, **attrs))

    def _op_bn(self, n):
        m = self.modules[n.target]
        src = self._src(n)
        var = m.running_var.detach().double().cpu().numpy()
        mean = m.running_mean.detach().double().cpu().numpy()
        gamma = m.weight.detach().double().cpu().numpy() if m.weight is not None else np.ones_like(var)
        beta = m.bias.detach().double().cpu().numpy() if m.bias is not None else np.zeros_like(var)
        g, b = batchnorm_affine(gamma, beta, mean, var, m.eps)
        self.env[n] = self.add_node(Node(self.uname(n.target), "affine", [self.env[src]],
                                         {"source": n.target, "bn": True, "origin": n.target},
                                         {"scale": g, "bias": b}))

    def _act_bounds(self, n):
        nn, F = self.nn, self.F
        arg = _arg_of(n)

        if n.op == "call_module":
            m = self.modules[n.target]
            if isinstance(m, nn.ReLU6):
                return 0.0, 6.0
            if isinstance(m, nn.Hardtanh):
                return float(m.min_val), float(m.max_val)
            return 0.0, None
        t = n.target
        if t in (F.relu, self.torch.relu, "relu", "relu_"):
            return 0.0, None
        if t is F.relu6:
            return 0.0, 6.0
        if t is F.hardtanh:
            return float(arg(1, "min_val", -1.0)), float(arg(2, "max_val", 1.0))
        lo, hi = arg(1, "min", None), arg(2, "max", None)
        for v in (lo, hi):
            if v is not None and not isinstance(v, (int, float)):
                raise ConversionError(f"lowbit.convert: clamp with tensor bounds (node '{n.name}') is not supported")
        lo, hi = (None if lo is None else float(lo)), (None if hi is None else float(hi))
        if lo is not None and hi is not None and lo > hi:
            lo = hi   # torch.clamp with min > max sets every element to max
        return lo, hi

    def _op_act(self, n):
        src = self._src(n)
        lo, hi = self._act_bounds(n)
        origin = _origin(n)
        self.env[n] = self.add_node(Node(self.uname(origin), "clamp", [self.env[src]], {"clamp": [lo, hi],
                                                                                       "origin": origin}))

    def _op_add(self, n):
        a, b = n.args
        if not (isinstance(a, self.fx.Node) and isinstance(b, self.fx.Node)):
            raise ConversionError(f"lowbit.convert: add of a tensor and a constant (node '{n.name}') is not supported")
        if self.shapes.get(a) != self.shapes.get(b):
            raise ConversionError(f"lowbit.convert: broadcasting add (node '{n.name}', shapes "
                                  f"{self.shapes.get(a)} and {self.shapes.get(b)}) is not supported")
        self.env[n] = self.add_node(Node(self.uname(n.name), "add", [self.env[a], self.env[b]], {"origin": n.name}))

    def _pool_params(self, n, kind):
        """The pooling node's attributes, from the module's attributes or the function's arguments."""
        arg = _arg_of(n, self.modules[n.target] if n.op == "call_module" else None)
        if kind == "adaptive_avgpool":
            return {"output_size": self._osize(arg(1, "output_size", None))}
        k = _pair(arg(1, "kernel_size", None))
        stride = arg(2, "stride", None)
        p = {"kernel": k, "stride": _pair(stride) if stride not in (None, [], ()) else list(k),
             "padding": _pair(arg(3, "padding", 0))}
        if kind == "maxpool":
            p["dilation"] = _pair(arg(4, "dilation", 1))
            if arg(5, "ceil_mode", False) or arg(6, "return_indices", False):
                raise ConversionError(f"lowbit.convert: max_pool2d with ceil_mode/return_indices (node '{n.name}')")
        else:
            if arg(4, "ceil_mode", False) or arg(6, "divisor_override", None) is not None:
                raise ConversionError(f"lowbit.convert: avg_pool2d with ceil_mode/divisor_override "
                                      f"(node '{n.name}')")
            p["count_include_pad"] = bool(arg(5, "count_include_pad", True))
        return p

    @staticmethod
    def _osize(s):
        if isinstance(s, (tuple, list)):
            return [None if v is None else int(v) for v in s]
        return [int(s), int(s)]

    def _pool(self, n, kind):
        src = self._src(n)
        if len(self.shapes.get(src) or ()) != 4:
            raise ConversionError(f"lowbit.convert: pooling of a non-4-D tensor (node '{n.name}')")
        self.env[n] = self.add_node(Node(self.uname(_origin(n)), kind, [self.env[src]], self._pool_params(n, kind)))

    def _op_mean(self, n):
        src = self._src(n)
        keep = _arg_of(n)(2, "keepdim", False)
        name = self.add_node(Node(self.uname(n.name), "adaptive_avgpool", [self.env[src]], {"output_size": [1, 1]}))
        if not keep:
            name = self.add_node(Node(self.uname(n.name + "_flatten"), "flatten", [name]))
        self.env[n] = name

    def _op_flatten(self, n):
        src = self._src(n)
        if len(self.shapes.get(src) or ()) == 2:
            self.env[n] = self.env[src]
            return
        if len(self.shapes.get(src) or ()) != 4:
            raise ConversionError(f"lowbit.convert: flatten of a {len(self.shapes.get(src) or ())}-D tensor "
                                  f"(node '{n.name}')")
        self.env[n] = self.add_node(Node(self.uname(_origin(n)), "flatten", [self.env[src]]))

    # ---- lowering ----------------------------------------------------------------------------
    def finish(self, out_val):
        ordered = lower(self.nodes, out_val, self.requant, ValueError).nodes
        # spatial size: free iff every flatten reads a 1x1 global pooling
        pooled = {nd.name for nd in ordered if nd.op == "adaptive_avgpool" and nd.attrs["output_size"] == [1, 1]}
        ordered[0].attrs["spatial_fixed"] = any(nd.op == "flatten" and nd.inputs[0] not in pooled for nd in ordered)
        self.nodes = ordered


def convert(qat, example_input, requant_in_epilogue: bool = True) -> Model:
    """Convert a :func:`lowbit.qat.prepare` model into a :class:`lowbit.Model`.

    ``example_input``: a float32 NCHW batch (torch tensor or NumPy array) of the
    size the model is used at; see the module docstring for what must match.
    Raises :class:`ConversionError` (a NotImplementedError) listing every
    unsupported module or function.
    """
    torch = _torch()
    if not isinstance(qat, torch.nn.Module):
        raise TypeError(f"qat: expected a torch.nn.Module from lowbit.qat.prepare, got {type(qat).__name__}")
    conv = _Converter(qat, example_input, requant_in_epilogue)
    conv.trace()
    conv.build()
    meta = {"source_model": type(qat).__name__, "example_input_shape": list(conv.example.shape),
            "requant_in_epilogue": bool(requant_in_epilogue), "torch_version": torch.__version__}
    return Model(conv.nodes, meta)


def compare(qat, model: Model, x, batch_size: int = 250, codes: bool = True) -> dict:
    """How closely ``model`` (lowbit kernels) reproduces the PyTorch fake-quant ``qat``.

    Returns top-1 agreement, logit differences (max, mean, 99th percentile of
    |lowbit - torch|, and the logits' std for scale) and, with ``codes``, the
    fraction of activation codes that differ at the input of every quantized
    layer (torch side: ``act_quant.codes(input)``; lowbit side: the codes the
    layer consumed). Both logit arrays are returned too.
    """
    torch = _torch()
    from ..train import qat as qatmod

    x = torch.as_tensor(np.asarray(x, dtype=np.float32)) if not isinstance(x, torch.Tensor) else x.float()
    mods = dict(qat.named_modules())
    layers = [n for n in model.nodes if n.op in ("conv", "linear") and n.attrs.get("module") in mods]
    captured, handles = {}, []
    if codes:
        for nd in layers:
            mod = mods[nd.attrs["module"]]
            if not isinstance(mod, (qatmod.QConv2d, qatmod.QLinear)):
                continue

            def hook(module, inputs, _name=nd.name):
                c = module.act_quant.codes(inputs[0])[0]
                if c.dim() == 4:
                    c = c.permute(0, 2, 3, 1)
                captured[_name] = c.contiguous().cpu().numpy()
            handles.append(mod.register_forward_pre_hook(hook))
    was_training = qat.training
    qat.eval()
    t_logits, l_logits = [], []
    diff = {nd.name: [0, 0] for nd in layers}
    try:
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                xb = x[i:i + batch_size]
                captured.clear()
                t_logits.append(qat(xb).float().cpu().numpy())
                if codes:
                    tr = model.trace(xb.cpu().numpy())
                    l_logits.append(np.asarray(tr[model.nodes[-1].name], np.float32))
                    for nd in layers:
                        if nd.name in captured:
                            ours = tr[nd.inputs[0]]
                            theirs = captured[nd.name]
                            diff[nd.name][0] += int(np.count_nonzero(ours != theirs))
                            diff[nd.name][1] += int(theirs.size)
                else:
                    l_logits.append(model(xb.cpu().numpy()))
    finally:
        qat.train(was_training)
        for h in handles:
            h.remove()
    t, lo = np.concatenate(t_logits), np.concatenate(l_logits)
    out = agreement(t, lo, {k: v for k, v in diff.items() if v[1]} if codes else None)
    out.update(torch_logits=t, lowbit_logits=lo)
    return out


def agreement(ref, lo, code_diff=None) -> dict:
    """How closely logits ``lo`` reproduce ``ref`` (both (N, ...)): n, top-1 agreement, max / mean /
    99th percentile of the absolute difference, ref's std; with ``code_diff`` ({name: [differ,
    total]}) also per-name and overall fractions of differing codes (compare, compare_qonnx)."""
    d = np.abs(ref.astype(np.float64) - lo)
    flat_r, flat_l = ref.reshape(len(ref), -1), lo.reshape(len(lo), -1)
    out = {"n": int(len(ref)), "top1_agreement": float(np.mean(flat_r.argmax(1) == flat_l.argmax(1))),
           "logit_absdiff_max": float(d.max()), "logit_absdiff_mean": float(d.mean()),
           "logit_absdiff_p99": float(np.percentile(d, 99)), "logit_std": float(ref.std())}
    if code_diff is not None:
        out["code_diff"] = {k: {"differ": v[0], "total": v[1], "fraction": v[0] / max(v[1], 1)}
                            for k, v in code_diff.items()}
        tot = sum(v[1] for v in code_diff.values())
        out["codes_differ"] = sum(v[0] for v in code_diff.values())
        out["codes_total"] = tot
        out["code_diff_fraction"] = out["codes_differ"] / max(tot, 1)
    return out
