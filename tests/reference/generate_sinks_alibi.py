#!/usr/bin/python3
"""Golden reference values for attend's sinks (gpt-oss) and ALiBi (BLOOM) options.

Writes tests/data/sinks_alibi.txt (read by tests/golden_sinks_alibi_test.cpp through tests/golden.hpp).

Run with Debian's python3-torch (torch 1.13):

    /usr/bin/python3 tests/reference/generate_sinks_alibi.py

The reference is eager PyTorch in float64, from seeded random inputs, written from the contract
(../shared/API.md, "Sinks and ALiBi"), not from attend's C++:

  * scores s = (q @ k.T) * scale, softcap c * tanh(s / c), then ALiBi s -= m_h * |i + Lk - Lq - j|
    (FlashAttention's distance, whatever the mask), then masked_fill(-inf) for the mask;
  * sinks as gpt-oss's reference implementation does them: the head's sink logit is appended as one
    more column of the scores, torch.softmax runs over the widened row, and the sink's column is
    dropped, so a row's weights sum to less than 1; lse is torch.logsumexp over the widened row;
  * GQA/MQA: K/V heads expanded with repeat_interleave (query head h reads kv head h // (H/G)).

Rows with no visible key: with a sink, softmax over [all -inf, sink] is exactly [0, ..., 0, 1], so the
output row is zero and the lse is the sink, as the contract says (no NaN to replace). Without a sink,
PyTorch gives NaN there; the script replaces exactly those rows by zeros (output) and -inf (lse).

Slopes: tests/data also pins attend::geometric_alibi_slopes against the slope function of the ALiBi
authors' code (ofirpress/attention_with_linear_biases, get_slopes), written out below.
"""

import math
import os
import sys

import torch

SEED = 20261201
DT = torch.float64
NEG_INF = float("-inf")

OUT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "sinks_alibi.txt")

gen = torch.Generator().manual_seed(SEED)
cases = []
names = set()


def randn(*shape, std=1.0):
    return torch.randn(*shape, generator=gen, dtype=DT) * std


def visible(mask, lq, lk):
    i = torch.arange(lq).unsqueeze(1)
    j = torch.arange(lk).unsqueeze(0)
    kind = mask[0]
    if kind == "none":
        return torch.ones(lq, lk, dtype=torch.bool)
    if kind == "causal":
        return j <= i + (lk - lq)
    if kind == "causal_top_left":
        return j <= i
    if kind == "sliding_window":
        return (j <= i + (lk - lq)) & (j > i + (lk - lq) - mask[1])
    raise ValueError(mask)


def alibi_slopes_paper(n):
    """get_slopes of the ALiBi authors' reference code."""
    def power_of_2(n):
        start = 2 ** (-2 ** -(math.log2(n) - 3))
        return [start * start ** i for i in range(n)]
    if math.log2(n).is_integer():
        return power_of_2(n)
    closest = 2 ** math.floor(math.log2(n))
    return power_of_2(closest) + alibi_slopes_paper(2 * closest)[0::2][: n - closest]


def head_ref(q, k, v, mask, scale, softcap, slope, sink):
    """One head: out [lq, dv], lse [lq]."""
    lq, lk = q.shape[0], k.shape[0]
    s = (q @ k.T) * scale
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    if slope is not None:
        i = torch.arange(lq, dtype=DT).unsqueeze(1)
        j = torch.arange(lk, dtype=DT).unsqueeze(0)
        s = s - slope * torch.abs(i + (lk - lq) - j)
    vis = visible(mask, lq, lk)
    s = s.masked_fill(~vis, NEG_INF)
    if sink is not None:
        wide = torch.cat([s, torch.full((lq, 1), sink, dtype=DT)], dim=1)
        p = torch.softmax(wide, dim=1)[:, :lk]
        lse = torch.logsumexp(wide, dim=1)
    else:
        p = torch.softmax(s, dim=1)
        lse = torch.logsumexp(s, dim=1)
        dead = ~vis.any(dim=1)
        assert torch.equal(torch.isnan(p).any(dim=1), dead) or lk == 0
        p[dead] = 0.0
        lse[dead] = NEG_INF
    assert not torch.isnan(p).any()
    return p @ v if lk > 0 else torch.zeros(lq, v.shape[1], dtype=DT), lse, p


def fmt(x):
    return "%.17g" % x


def mask_line(mask):
    return "mask " + (mask[0] if mask[0] != "sliding_window" else "sliding_window %d" % mask[1])


def case(name, H, G, lq, lk, d, dv, mask=("none",), scale=None, softcap=0.0, alibi=None, sinks=None,
         qk_std=1.0, weights=False):
    """alibi / sinks: None, or a list of H values."""
    assert name not in names, name
    names.add(name)
    q = randn(lq, H * d, std=qk_std)
    k = randn(lk, G * d, std=qk_std)
    v = randn(lk, G * dv)
    sc = scale if scale is not None else 1.0 / math.sqrt(d)
    out = torch.zeros(lq, H * dv, dtype=DT)
    lse = torch.zeros(lq, H, dtype=DT)
    p0 = None
    for h in range(H):
        g = h // (H // G)
        o, l, p = head_ref(q[:, h * d:(h + 1) * d], k[:, g * d:(g + 1) * d], v[:, g * dv:(g + 1) * dv], mask, sc,
                           softcap, None if alibi is None else alibi[h], None if sinks is None else sinks[h])
        out[:, h * dv:(h + 1) * dv] = o
        lse[:, h] = l
        if h == 0:
            p0 = p
    mats = [("q", q), ("k", k), ("v", v)]
    if alibi is not None:
        mats.append(("alibi", torch.tensor([alibi], dtype=DT)))
    if sinks is not None:
        mats.append(("sinks", torch.tensor([sinks], dtype=DT)))
    mats += [("out", out), ("lse", lse)]
    if weights:
        mats.append(("weights", p0))
    cases.append(dict(name=name, kind="mha", mats=mats, mask=mask, scale=scale, softcap=softcap, heads=(H, G)))


def slopes_case(name, H, max_bias):
    names.add(name)
    want = torch.tensor([alibi_slopes_paper(H)], dtype=DT) if max_bias == 8.0 else None
    # ggml's rule for other max_bias values, written from its definition.
    n = 2 ** math.floor(math.log2(H))
    m0, m1 = 2 ** (-max_bias / n), 2 ** (-max_bias / (2 * n))
    ggml = torch.tensor([[m0 ** (h + 1) if h < n else m1 ** (2 * (h - n) + 1) for h in range(H)]], dtype=DT)
    if want is not None:
        assert torch.allclose(want, ggml, rtol=1e-14, atol=0), (H, want, ggml)
    cases.append(dict(name=name, kind="slopes", mats=[("slopes", ggml)], mask=None, scale=None, softcap=0.0,
                      heads=None, params=[("heads", H), ("max_bias", fmt(max_bias))]))


def write(path):
    lines = ["# generated by tests/reference/generate_sinks_alibi.py (torch %s); do not edit" % torch.__version__,
             "# seed %d; float64 eager reference: scores, softcap, ALiBi, mask, softmax over [scores, sink]" % SEED]
    for c in cases:
        lines += ["", "case " + c["name"], "kind " + c["kind"]]
        if c["scale"] is not None:
            lines.append("scale " + fmt(c["scale"]))
        if c["mask"] is not None:
            lines.append(mask_line(c["mask"]))
        if c["softcap"] > 0:
            lines.append("softcap " + fmt(c["softcap"]))
        if c["heads"] is not None:
            lines.append("heads %d %d" % c["heads"])
        for pname, pval in c.get("params", []):
            lines.append("param %s %s" % (pname, pval))
        for mname, m in c["mats"]:
            lines.append("matrix %s %d %d" % (mname, m.shape[0], m.shape[1]))
            for row in m.tolist():
                lines.append(" ".join(fmt(x) for x in row))
        lines.append("end")
    text = "\n".join(lines) + "\n"
    with open(path, "w") as f:
        f.write(text)
    return len(text.encode())


def main():
    masks = [("none",), ("causal",), ("causal_top_left",), ("sliding_window", 3)]
    shapes = [("self6", 6, 6), ("cross4x9", 4, 9), ("cross9x4", 9, 4)]
    for tag, lq, lk in shapes:
        for m in masks:
            mt = m[0] if m[0] != "sliding_window" else "window%d" % m[1]
            slopes = alibi_slopes_paper(4)
            case("alibi_h4g4_%s_%s" % (tag, mt), 4, 4, lq, lk, 8, 8, mask=m, alibi=slopes)
            sinks = [float(x) for x in randn(8).tolist()]
            case("sinks_h8g2_%s_%s" % (tag, mt), 8, 2, lq, lk, 8, 6, mask=m, sinks=sinks)
            case("both_h6g1_%s_%s" % (tag, mt), 6, 1, lq, lk, 8, 8, mask=m, alibi=alibi_slopes_paper(6),
                 sinks=[0.5, -1.0, 2.0, 0.0, 3.0, -2.5])
    # ALiBi together with softcap and a custom scale; a large sink that dominates; negative sinks.
    case("alibi_softcap5_scale0.7_h8g2_self7_causal", 8, 2, 7, 7, 16, 8, mask=("causal",), scale=0.7, softcap=5.0,
         alibi=alibi_slopes_paper(8), qk_std=2.0)
    case("alibi_softcap2_h4g4_cross5x11_none", 4, 4, 5, 11, 8, 8, softcap=2.0, alibi=[0.0, 0.25, 1.0, 4.0])
    case("sinks_large_h2g2_self5_causal", 2, 2, 5, 5, 8, 8, mask=("causal",), sinks=[30.0, -30.0])
    # Rows that see no key: bottom-right causal with Lq > Lk, a window with keys cut, Lk = 0.
    case("sinks_dead_rows_h4g2_cross8x3_causal", 4, 2, 8, 3, 8, 8, mask=("causal",), sinks=[1.0, -0.5, 0.0, 2.0])
    case("both_dead_rows_h2g1_cross6x2_causal", 2, 1, 6, 2, 8, 8, mask=("causal",), sinks=[0.3, 1.7],
         alibi=[0.5, 0.125])
    case("sinks_no_keys_h2g2_cross3x0_none", 2, 2, 3, 0, 8, 8, sinks=[0.75, -1.25])
    # Longer rows, long distances (ALiBi's penalty grows with distance).
    case("alibi_h8g8_self64_causal", 8, 8, 64, 64, 16, 16, mask=("causal",), alibi=alibi_slopes_paper(8))
    case("both_h12g4_cross16x80_window20", 12, 4, 16, 80, 16, 8, mask=("sliding_window", 20),
         alibi=alibi_slopes_paper(12), sinks=[float(x) for x in randn(12).tolist()])
    # Single-head calls with weights (attention_weights with sinks: rows sum to less than 1).
    case("weights_both_h1g1_self7_causal", 1, 1, 7, 7, 8, 8, mask=("causal",), alibi=[0.5], sinks=[0.25],
         weights=True)
    case("weights_sinks_h1g1_cross4x9_none", 1, 1, 4, 9, 8, 8, sinks=[1.5], weights=True)
    for H in (1, 2, 4, 8, 12, 16, 20, 32, 40, 64, 80):
        slopes_case("slopes_h%d_bias8" % H, H, 8.0)
    for H, b in ((8, 4.0), (12, 16.0), (5, 1.0)):
        slopes_case("slopes_h%d_bias%g" % (H, b), H, b)

    size = write(OUT_PATH)
    print("wrote %s: %d cases, %d bytes, torch %s, seed %d" % (os.path.relpath(OUT_PATH), len(cases), size,
                                                               torch.__version__, SEED))


if __name__ == "__main__":
    sys.exit(main())
