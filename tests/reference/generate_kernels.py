#!/usr/bin/python3
"""Golden reference values for attend's weight-free attention kernels.

Writes tests/data/kernels.txt (read by tests/golden_kernels_test.cpp through tests/golden.hpp).

Run with Debian's python3-torch (torch 1.13):

    /usr/bin/python3 tests/reference/generate_kernels.py

The reference is PyTorch's own routines, in float64, from seeded random inputs; nothing here is
a port of attend's C++ code:

  * sdpa / weights: torch.softmax over (q @ k.T) * scale, with softcap (c * tanh(s / c)), the
    additive bias and masked_fill(-inf) for the mask, in the contract's order (scale, softcap,
    bias, mask, softmax).  torch 1.13 has no F.scaled_dot_product_attention.
  * mha with d_v == d and no extra options: torch.nn.functional.multi_head_attention_forward with
    identity in/out projections, zero biases and a float attn_mask (0 / -inf).  GQA/MQA with
    d_v == d also go through it: the k/v "projection" is then the 0/1 matrix that copies kv head
    h // (H/G) into query head h's slot, i.e. repeat_interleave written as a linear map.
  * other mha cases (d_v != d, softcap, windows): K/V heads are expanded with repeat_interleave
    along the head dimension (query head h reads kv head h // (H/G)) and each head goes through
    the sdpa reference above.  Whenever both routes apply, the script checks that they agree.

Rows with no visible key (everything masked, an all -inf bias row, or Lk == 0) are defined by
attend's contract as all-zero output and all-zero weights.  PyTorch produces NaN there (softmax of
a row that is all -inf); this script replaces exactly those rows by zeros, after checking that the
NaN rows are exactly the rows without a visible key and that nothing else is NaN.
"""

import math
import os
import sys

import torch
import torch.nn.functional as F

SEED = 20240521
DT = torch.float64
NEG_INF = float("-inf")

OUT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "kernels.txt")

gen = torch.Generator().manual_seed(SEED)


def randn(*shape, std=1.0):
    return torch.randn(*shape, generator=gen, dtype=DT) * std


# --------------------------------------------------------------------------------------------
# Mask semantics, written from the contract (../shared/API.md, "Masks and options").
# --------------------------------------------------------------------------------------------

def visible(mask, lq, lk):
    """Bool [lq, lk]: True where query i may see key j."""
    i = torch.arange(lq).unsqueeze(1)
    j = torch.arange(lk).unsqueeze(0)
    kind = mask[0]
    if kind == "none":
        return torch.ones(lq, lk, dtype=torch.bool)
    if kind == "causal":  # bottom-right aligned
        return j <= i + (lk - lq)
    if kind == "causal_top_left":  # PyTorch is_causal
        return j <= i
    if kind == "sliding_window":
        w = mask[1]
        return (j <= i + (lk - lq)) & (j > i + (lk - lq) - w)
    raise ValueError(mask)


def float_mask(vis):
    """0 where visible, -inf where hidden (the additive attn_mask form PyTorch uses)."""
    return torch.zeros(vis.shape, dtype=DT).masked_fill(~vis, NEG_INF)


def dead_rows(vis, bias):
    """Rows with no visible key: contract says all-zero output and weights."""
    alive = vis.clone()
    if bias is not None:
        alive &= bias != NEG_INF
    return ~alive.any(dim=-1)


def zero_dead_rows(x, dead, what):
    """Replace PyTorch's NaN rows (no visible key) by the contract's zeros."""
    nan_rows = torch.isnan(x).any(dim=-1)
    if x.shape[-1] > 0:
        assert torch.equal(nan_rows, dead), f"{what}: NaN rows {nan_rows.tolist()} != dead rows {dead.tolist()}"
        assert torch.isnan(x[dead]).all(), f"{what}: partially NaN dead row"
    x = x.clone()
    x[dead] = 0.0
    assert not torch.isnan(x).any()
    return x


# --------------------------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------------------------

def sdpa_ref(q, k, v, mask=("none",), scale=None, softcap=0.0, bias=None):
    """Returns (out [Lq, dv], weights [Lq, Lk])."""
    lq, d = q.shape
    lk = k.shape[0]
    if scale is None:
        scale = 1.0 / math.sqrt(d)
    s = torch.matmul(q, k.T) * scale
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    if bias is not None:
        s = s + bias
    vis = visible(mask, lq, lk)
    s = s.masked_fill(~vis, NEG_INF)
    p = torch.softmax(s, dim=-1)
    dead = dead_rows(vis, bias)
    p = zero_dead_rows(p, dead, "weights")
    if lk == 0:
        out = torch.zeros(lq, v.shape[1], dtype=DT)
    else:
        out = torch.softmax(s, dim=-1) @ v  # NaN rows here too: zeroed below
        out = zero_dead_rows(out, dead, "out") if v.shape[1] > 0 else out
    return out, p


def gqa_ref_repeat(q, k, v, H, G, mask=("none",), scale=None, softcap=0.0):
    """Grouped heads via repeat_interleave: query head h reads kv head h // (H/G)."""
    lq, lk = q.shape[0], k.shape[0]
    d = q.shape[1] // H
    dv = v.shape[1] // G
    qh = q.reshape(lq, H, d).transpose(0, 1)          # [H, Lq, d]
    kh = k.reshape(lk, G, d).transpose(0, 1)          # [G, Lk, d]
    vh = v.reshape(lk, G, dv).transpose(0, 1)         # [G, Lk, dv]
    kh = kh.repeat_interleave(H // G, dim=0)          # [H, Lk, d]
    vh = vh.repeat_interleave(H // G, dim=0)          # [H, Lk, dv]
    outs = [sdpa_ref(qh[h], kh[h], vh[h], mask=mask, scale=scale, softcap=softcap)[0] for h in range(H)]
    return torch.cat(outs, dim=1)                     # [Lq, H*dv], head h in columns [h*dv, (h+1)*dv)


def expansion_matrix(H, G, d):
    """[H*d, G*d] 0/1 matrix: rows of query head h copy kv head h // (H/G) (repeat_interleave)."""
    m = torch.zeros(H * d, G * d, dtype=DT)
    for h in range(H):
        g = h // (H // G)
        m[h * d:(h + 1) * d, g * d:(g + 1) * d] = torch.eye(d, dtype=DT)
    return m


def mha_ref_torch(q, k, v, H, G, mask=("none",)):
    """torch.nn.functional.multi_head_attention_forward with identity-like projections.

    Only for d_v == d and the default scale 1/sqrt(d), no softcap (the routine has neither knob).
    """
    lq, E = q.shape
    lk = k.shape[0]
    d = E // H
    assert v.shape[1] // G == d
    vis = visible(mask, lq, lk)
    attn_mask = None if mask[0] == "none" else float_mask(vis)
    kv_w = expansion_matrix(H, G, d)  # the identity when G == H
    out, _ = F.multi_head_attention_forward(
        q, k, v, E, H,
        in_proj_weight=None, in_proj_bias=torch.zeros(3 * E, dtype=DT),
        bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0,
        out_proj_weight=torch.eye(E, dtype=DT), out_proj_bias=torch.zeros(E, dtype=DT),
        training=False, need_weights=False, attn_mask=attn_mask,
        use_separate_proj_weight=True,
        q_proj_weight=torch.eye(E, dtype=DT), k_proj_weight=kv_w, v_proj_weight=kv_w)
    assert out.shape == (lq, E)
    return zero_dead_rows(out, dead_rows(vis, None), "mha out")


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------

cases = []      # list of dicts, written in order
names = set()


def fmt(x):
    return "%.17g" % x  # inf, -inf, nan come out as such


def add_case(name, kind, mats, mask=("none",), scale=None, softcap=0.0, heads=None):
    assert name not in names, name
    names.add(name)
    cases.append(dict(name=name, kind=kind, mats=mats, mask=mask, scale=scale, softcap=softcap,
                      heads=heads))


def mask_line(mask):
    return "mask " + (mask[0] if mask[0] != "sliding_window" else "sliding_window %d" % mask[1])


def mask_tag(mask):
    return mask[0] if mask[0] != "sliding_window" else "window%d" % mask[1]


def write(path):
    lines = ["# generated by tests/reference/generate_kernels.py (torch %s); do not edit" % torch.__version__,
             "# seed %d; float64 reference from torch.softmax / multi_head_attention_forward /"
             " repeat_interleave; rows with no visible key are zeros (contract), not PyTorch's NaN" % SEED]
    for c in cases:
        lines.append("")
        lines.append("case " + c["name"])
        lines.append("kind " + c["kind"])
        if c["scale"] is not None:
            lines.append("scale " + fmt(c["scale"]))
        lines.append(mask_line(c["mask"]))
        if c["softcap"] > 0:
            lines.append("softcap " + fmt(c["softcap"]))
        if c["heads"] is not None:
            lines.append("heads %d %d" % c["heads"])
        for mname, m in c["mats"]:
            assert m.dim() == 2 and m.dtype == DT
            lines.append("matrix %s %d %d" % (mname, m.shape[0], m.shape[1]))
            for row in m.tolist():
                lines.append(" ".join(fmt(x) for x in row))
        lines.append("end")
    text = "\n".join(lines) + "\n"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return len(text.encode())


# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------

def sdpa_case(name, lq, lk, d, dv, mask=("none",), scale=None, softcap=0.0, qk_std=1.0, bias=None):
    q = randn(lq, d, std=qk_std)
    k = randn(lk, d, std=qk_std)
    v = randn(lk, dv)
    b = bias(lq, lk) if callable(bias) else bias
    out, _ = sdpa_ref(q, k, v, mask=mask, scale=scale, softcap=softcap, bias=b)
    mats = [("q", q), ("k", k), ("v", v)]
    if b is not None:
        mats.append(("bias", b))
    mats.append(("out", out))
    add_case(name, "sdpa", mats, mask=mask, scale=scale, softcap=softcap)
    # Independent cross-check: one-head multi_head_attention_forward (default scale, no softcap,
    # the bias and the mask merged into its additive attn_mask).
    if scale is None and softcap == 0 and lk > 0 and dv == d:
        am = float_mask(visible(mask, lq, lk)) + (b if b is not None else 0.0)
        o2, _ = F.multi_head_attention_forward(
            q, k, v, d, 1, None, torch.zeros(3 * d, dtype=DT), None, None, False, 0.0,
            torch.eye(d, dtype=DT), torch.zeros(d, dtype=DT), training=False, need_weights=False,
            attn_mask=am, use_separate_proj_weight=True, q_proj_weight=torch.eye(d, dtype=DT),
            k_proj_weight=torch.eye(d, dtype=DT), v_proj_weight=torch.eye(d, dtype=DT))
        o2 = torch.nan_to_num(o2, nan=0.0)
        err = (o2 - out).abs().max().item() if out.numel() else 0.0
        assert err < 1e-12 * (1 + out.abs().max().item()), (name, err)


def weights_case(name, lq, lk, d, mask=("none",), scale=None, softcap=0.0, qk_std=1.0):
    q = randn(lq, d, std=qk_std)
    k = randn(lk, d, std=qk_std)
    _, p = sdpa_ref(q, k, torch.zeros(lk, 0, dtype=DT), mask=mask, scale=scale, softcap=softcap)
    add_case(name, "weights", [("q", q), ("k", k), ("weights", p)], mask=mask, scale=scale,
             softcap=softcap)


def mha_case(name, H, G, lq, lk, d, dv, mask=("none",), scale=None, softcap=0.0):
    q = randn(lq, H * d)
    k = randn(lk, G * d)
    v = randn(lk, G * dv)
    out = gqa_ref_repeat(q, k, v, H, G, mask=mask, scale=scale, softcap=softcap)
    if dv == d and scale is None and softcap == 0 and mask[0] in ("none", "causal", "causal_top_left"):
        out2 = mha_ref_torch(q, k, v, H, G, mask=mask)
        err = (out2 - out).abs().max().item()
        assert err < 1e-12 * (1 + out.abs().max().item()), (name, err)
        out = out2  # prefer PyTorch's own multi-head routine as the recorded reference
    add_case(name, "mha", [("q", q), ("k", k), ("v", v), ("out", out)], mask=mask, scale=scale,
             softcap=softcap, heads=(H, G))


def main():
    # A tiny case a reader can check on paper: Q=[[1,0],[0,1]], K=[[1,0],[0,1],[1,1]],
    # V=[[1,2],[3,4],[5,6]], unmasked, gives O=[[3,4],[3.406673,4.406673]].
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=DT)
    k = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=DT)
    v = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], dtype=DT)
    out, _ = sdpa_ref(q, k, v)
    assert abs(out[0, 0] - 3) < 1e-12 and abs(out[1, 0] - 3.406673) < 1e-6, out
    add_case("sdpa_paper_example", "sdpa", [("q", q), ("k", k), ("v", v), ("out", out)])

    # SDPA shapes (Lq, Lk, d, dv), no mask.
    for lq, lk, d, dv in [(1, 1, 1, 1), (1, 37, 16, 16), (4, 4, 8, 8), (5, 9, 16, 12), (9, 5, 16, 16),
                          (17, 33, 32, 24), (64, 80, 64, 64), (130, 70, 8, 8), (3, 2, 5, 1)]:
        sdpa_case("sdpa_shape_%dx%d_d%d_dv%d" % (lq, lk, d, dv), lq, lk, d, dv)
    # No keys at all: every row is fully masked -> zeros.
    sdpa_case("sdpa_empty_keys_3x0_d4_dv5", 3, 0, 4, 5)

    # Every mask kind with Lq < Lk, Lq == Lk, Lq > Lk.
    shapes = [("lt", 5, 9, 16, 12), ("eq", 7, 7, 8, 8), ("gt", 9, 5, 16, 16)]
    masks = [("causal",), ("causal_top_left",), ("sliding_window", 1), ("sliding_window", 3),
             ("sliding_window", 12)]  # 12 > every Lk above: same rows as causal
    for mask in masks:
        for tag, lq, lk, d, dv in shapes:
            sdpa_case("sdpa_%s_%s_%dx%d" % (mask_tag(mask), tag, lq, lk), lq, lk, d, dv, mask=mask)
    sdpa_case("sdpa_causal_17x33_d32_dv24", 17, 33, 32, 24, mask=("causal",))
    sdpa_case("sdpa_causal_top_left_12x20_d16_dv12", 12, 20, 16, 12, mask=("causal_top_left",))
    sdpa_case("sdpa_window5_20x12_d16_dv12", 20, 12, 16, 12, mask=("sliding_window", 5))
    sdpa_case("sdpa_causal_decode_1x37", 1, 37, 8, 8, mask=("causal",))
    sdpa_case("sdpa_causal_top_left_decode_1x37", 1, 37, 8, 8, mask=("causal_top_left",))
    sdpa_case("sdpa_window8_decode_1x37", 1, 37, 8, 8, mask=("sliding_window", 8))
    sdpa_case("sdpa_causal_24x24_d8_dv4", 24, 24, 8, 4, mask=("causal",))

    # Softcap: inputs scaled so that |s| is well beyond the cap (std of s ~ qk_std^2 at d=16).
    sdpa_case("sdpa_softcap5_6x10", 6, 10, 16, 12, softcap=5.0, qk_std=3.0)
    sdpa_case("sdpa_softcap5_causal_10x6", 10, 6, 16, 12, softcap=5.0, qk_std=3.0, mask=("causal",))
    sdpa_case("sdpa_softcap30_8x8", 8, 8, 16, 16, softcap=30.0, qk_std=6.0)
    sdpa_case("sdpa_softcap30_window3_7x12", 7, 12, 16, 16, softcap=30.0, qk_std=6.0,
              mask=("sliding_window", 3))
    sdpa_case("sdpa_softcap5_scale0.3_6x9", 6, 9, 16, 8, softcap=5.0, scale=0.3, qk_std=4.0)

    # Custom scale.
    sdpa_case("sdpa_scale0.3_6x10", 6, 10, 16, 12, scale=0.3)
    sdpa_case("sdpa_scale2.5_8x8", 8, 8, 16, 16, scale=2.5)
    sdpa_case("sdpa_scale2.5_causal_5x9", 5, 9, 16, 16, scale=2.5, mask=("causal",))

    # Additive bias: normal, ~15% -inf entries, row 1 entirely -inf.
    def make_bias(std=1.0, row_all_inf=1, frac_inf=0.15):
        def f(lq, lk):
            b = randn(lq, lk, std=std)
            hide = torch.rand(lq, lk, generator=gen, dtype=DT) < frac_inf
            b = b.masked_fill(hide, NEG_INF)
            if row_all_inf is not None and row_all_inf < lq:
                b[row_all_inf, :] = NEG_INF
            return b
        return f

    sdpa_case("sdpa_bias_6x10", 6, 10, 16, 12, bias=make_bias())
    sdpa_case("sdpa_bias_causal_8x8", 8, 8, 16, 16, bias=make_bias(), mask=("causal",))
    sdpa_case("sdpa_bias_causal_5x9", 5, 9, 16, 16, bias=make_bias(), mask=("causal",))
    sdpa_case("sdpa_bias_causal_9x5", 9, 5, 8, 8, bias=make_bias(), mask=("causal",))
    sdpa_case("sdpa_bias_finite_7x11", 7, 11, 16, 8, bias=make_bias(std=2.0, row_all_inf=None, frac_inf=0.0))
    sdpa_case("sdpa_bias_window3_9x9", 9, 9, 8, 8, bias=make_bias(row_all_inf=4), mask=("sliding_window", 3))
    # softcap applies before the bias: the bias is large enough that the order matters.
    sdpa_case("sdpa_bias_softcap5_6x10", 6, 10, 16, 12, bias=make_bias(std=3.0), softcap=5.0, qk_std=3.0)
    sdpa_case("sdpa_bias_scale0.3_causal_7x7", 7, 7, 16, 8, bias=make_bias(std=2.0), scale=0.3,
              mask=("causal",))

    # Large logits: |s| in the thousands (std of s ~ 900 at qk_std=30, d=16).
    sdpa_case("sdpa_large_logits_8x12", 8, 12, 16, 16, qk_std=30.0)
    sdpa_case("sdpa_large_logits_causal_12x8", 12, 8, 16, 16, qk_std=30.0, mask=("causal",))
    sdpa_case("sdpa_large_logits_causal_10x10", 10, 10, 16, 16, qk_std=30.0, mask=("causal",))
    sdpa_case("sdpa_large_logits_window4_9x13", 9, 13, 16, 16, qk_std=30.0, mask=("sliding_window", 4))
    sdpa_case("sdpa_large_logits_scale2.5_6x6", 6, 6, 8, 8, qk_std=10.0, scale=2.5)

    # attention_weights.
    weights_case("weights_none_5x9", 5, 9, 16)
    weights_case("weights_none_9x5", 9, 5, 16)
    weights_case("weights_causal_5x9", 5, 9, 16, mask=("causal",))
    weights_case("weights_causal_9x5", 9, 5, 16, mask=("causal",))
    weights_case("weights_causal_top_left_5x9", 5, 9, 16, mask=("causal_top_left",))
    weights_case("weights_causal_top_left_9x5", 9, 5, 16, mask=("causal_top_left",))
    weights_case("weights_window3_7x10", 7, 10, 8, mask=("sliding_window", 3))
    weights_case("weights_window1_6x6", 6, 6, 8, mask=("sliding_window", 1))
    weights_case("weights_softcap5_6x8", 6, 8, 16, softcap=5.0, qk_std=3.0)
    weights_case("weights_softcap5_causal_8x6", 8, 6, 16, softcap=5.0, qk_std=3.0, mask=("causal",))
    weights_case("weights_scale2.5_5x7", 5, 7, 16, scale=2.5)
    weights_case("weights_large_logits_causal_7x7", 7, 7, 16, qk_std=30.0, mask=("causal",))

    # Multi-head: MHA (H=G), GQA, MQA; self (Lq == Lk) and cross (Lq != Lk); none and causal.
    configs = [("mha_h4g4_d8", 4, 4, 8, 8),
               ("gqa_h8g2_d16_dv8", 8, 2, 16, 8),
               ("gqa_h6g3_d8_dv12", 6, 3, 8, 12),
               ("mqa_h4g1_d16_dv8", 4, 1, 16, 8),
               ("gqa_h8g2_d8", 8, 2, 8, 8),      # d_v == d: through multi_head_attention_forward
               ("mqa_h4g1_d8", 4, 1, 8, 8)]      # ditto, with a broadcast 0/1 k/v projection
    for cname, H, G, d, dv in configs:
        for mask in [("none",), ("causal",)]:
            # the two d_v == d GQA/MQA configs only add a second route: self/none, cross/causal
            extra = cname in ("gqa_h8g2_d8", "mqa_h4g1_d8")
            if not (extra and mask[0] != "none"):
                mha_case("%s_self5_%s" % (cname, mask_tag(mask)), H, G, 5, 5, d, dv, mask=mask)
            if not (extra and mask[0] == "none"):
                mha_case("%s_cross4x7_%s" % (cname, mask_tag(mask)), H, G, 4, 7, d, dv, mask=mask)
    mha_case("mha_h4g4_d8_cross9x4_causal", 4, 4, 9, 4, 8, 8, mask=("causal",))
    mha_case("gqa_h6g3_d8_dv12_cross9x4_causal", 6, 3, 9, 4, 8, 12, mask=("causal",))
    mha_case("mha_h4g4_d8_self6_causal_top_left", 4, 4, 6, 6, 8, 8, mask=("causal_top_left",))
    mha_case("gqa_h8g2_d16_dv8_cross4x7_causal_top_left", 8, 2, 4, 7, 16, 8, mask=("causal_top_left",))
    mha_case("gqa_h6g3_d8_dv12_self7_window3", 6, 3, 7, 7, 8, 12, mask=("sliding_window", 3))
    mha_case("mqa_h4g1_d16_dv8_cross4x10_window2", 4, 1, 4, 10, 16, 8, mask=("sliding_window", 2))
    mha_case("gqa_h8g2_d16_dv8_self5_softcap5_scale1.5", 8, 2, 5, 5, 16, 8, scale=1.5, softcap=5.0)

    size = write(OUT_PATH)
    by_kind = {}
    for c in cases:
        by_kind[c["kind"]] = by_kind.get(c["kind"], 0) + 1
    print("wrote %s: %d cases (%s), %d bytes, torch %s, seed %d" % (
        os.path.relpath(OUT_PATH), len(cases),
        ", ".join("%s %d" % kv for kv in sorted(by_kind.items())), size, torch.__version__, SEED))
    for c in cases:
        dims = " ".join("%s[%dx%d]" % (n, m.shape[0], m.shape[1]) for n, m in c["mats"])
        print("  %-48s %-7s %s" % (c["name"], c["kind"], dims))


if __name__ == "__main__":
    sys.exit(main())
