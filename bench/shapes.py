"""Benchmark layer lists, as plain data.

Every entry is a dict:
  name, set, count (times the layer occurs in the network),
  conv: {cin, cout, kh, kw, stride, pad, h_in, w_in, h_out, w_out} or None for plain GEMMs,
  M, N, K: the implicit-GEMM shape (M = output pixels at batch 1, N = cout, K = cin*kh*kw).
All networks at 224x224, batch 1.
"""


def conv(name, cin, cout, k, stride, pad, h_in, count=1):
    h_out = (h_in + 2 * pad - k) // stride + 1
    return {
        "name": name, "count": count,
        "conv": {"cin": cin, "cout": cout, "kh": k, "kw": k, "stride": stride, "pad": pad,
                 "h_in": h_in, "w_in": h_in, "h_out": h_out, "w_out": h_out},
        "M": h_out * h_out, "N": cout, "K": cin * k * k,
    }


def gemm(name, m, n, k, count=1):
    return {"name": name, "count": count, "conv": None, "M": m, "N": n, "K": k}


RESNET18 = [  # 20 convs in total
    conv("conv1_7x7s2", 3, 64, 7, 2, 3, 224),
    conv("layer1_3x3", 64, 64, 3, 1, 1, 56, count=4),
    conv("layer2_3x3s2", 64, 128, 3, 2, 1, 56),
    conv("layer2_3x3", 128, 128, 3, 1, 1, 28, count=3),
    conv("layer2_down_1x1s2", 64, 128, 1, 2, 0, 56),
    conv("layer3_3x3s2", 128, 256, 3, 2, 1, 28),
    conv("layer3_3x3", 256, 256, 3, 1, 1, 14, count=3),
    conv("layer3_down_1x1s2", 128, 256, 1, 2, 0, 28),
    conv("layer4_3x3s2", 256, 512, 3, 2, 1, 14),
    conv("layer4_3x3", 512, 512, 3, 1, 1, 7, count=3),
    conv("layer4_down_1x1s2", 256, 512, 1, 2, 0, 14),
]

VGG16 = [  # 13 convs in total, all 3x3 stride 1 pad 1
    conv("conv1_1", 3, 64, 3, 1, 1, 224),
    conv("conv1_2", 64, 64, 3, 1, 1, 224),
    conv("conv2_1", 64, 128, 3, 1, 1, 112),
    conv("conv2_2", 128, 128, 3, 1, 1, 112),
    conv("conv3_1", 128, 256, 3, 1, 1, 56),
    conv("conv3_2_3", 256, 256, 3, 1, 1, 56, count=2),
    conv("conv4_1", 256, 512, 3, 1, 1, 28),
    conv("conv4_2_3", 512, 512, 3, 1, 1, 28, count=2),
    conv("conv5_1_3", 512, 512, 3, 1, 1, 14, count=3),
]

MOBILENET_PW = [  # MobileNet-v1 (width 1.0): the 13 pointwise convs
    conv("pw1_32_64", 32, 64, 1, 1, 0, 112),
    conv("pw2_64_128", 64, 128, 1, 1, 0, 56),
    conv("pw3_128_128", 128, 128, 1, 1, 0, 56),
    conv("pw4_128_256", 128, 256, 1, 1, 0, 28),
    conv("pw5_256_256", 256, 256, 1, 1, 0, 28),
    conv("pw6_256_512", 256, 512, 1, 1, 0, 14),
    conv("pw7_11_512_512", 512, 512, 1, 1, 0, 14, count=5),
    conv("pw12_512_1024", 512, 1024, 1, 1, 0, 7),
    conv("pw13_1024_1024", 1024, 1024, 1, 1, 0, 7),
]

GEMM = [
    gemm("square_1024", 1024, 1024, 1024),
    gemm("gemv_1x4096x4096", 1, 4096, 4096),
]

SETS = {"resnet18": RESNET18, "vgg16": VGG16, "mobilenet_pw": MOBILENET_PW, "gemm": GEMM}
ALIASES = {"mobilenet": "mobilenet_pw", "square": "gemm"}


def canonical(set_names):
    """Resolve aliases and 'all' into a list of SETS keys (order kept, no duplicates)."""
    names = list(SETS) if "all" in set_names else [ALIASES.get(s, s) for s in set_names]
    for s in names:
        if s not in SETS:
            raise SystemExit(f"unknown shape set {s!r}; choose from {sorted(SETS) + ['all']}")
    return list(dict.fromkeys(names))


def get(set_names):
    """Entries of the named sets ('all' = every set), each tagged with its set name."""
    return [dict(e, set=s) for s in canonical(set_names) for e in SETS[s]]


if __name__ == "__main__":
    for e in get(["all"]):
        print(f"{e['set']:13s} {e['name']:20s} x{e['count']}  M={e['M']:6d} N={e['N']:5d} K={e['K']:5d}")
