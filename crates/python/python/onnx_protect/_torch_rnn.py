"""The recurrent operators of :mod:`onnx_protect._torch_graph` (``LSTM``, ``GRU``, ``RNN``):
forward, reverse and bidirectional, layout 0 (``[seq, batch, ...]``: onnxruntime runs no
other), with the default activations, as the ONNX operator specification
computes them (gate orders ``iofc`` and ``zrh``; a GRU's ``linear_before_reset``; an LSTM's
peepholes; ``sequence_lens``: a sample's steps past its length leave its state as it was
and output zeros, a reverse direction starting at its last step). Layout 1, other activations
and clipping are refused by name."""

from __future__ import annotations

import torch

from ._torch_ops import Unsupported, _given

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
DEFAULT_ACTIVATIONS = {"LSTM": ["sigmoid", "tanh", "tanh"], "GRU": ["sigmoid", "tanh"], "RNN": ["tanh"]}


def _step(kind, xw, h, c, r, rb, hs, linear_before_reset, peep=None):
    """One time step of one direction: the new hidden (and for LSTM cell) state; ``peep``: an
    LSTM's peephole weights ``[3 × hidden]`` (input, output, forget)."""
    if kind == "LSTM":
        i, o, f, cc = (xw + h @ r.t() + rb).split(hs, dim=1)
        if peep is not None:
            pi, po, pf = peep.split(hs)
            i, f = i + pi * c, f + pf * c
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(cc)
        if peep is not None:
            o = o + po * c
        return torch.sigmoid(o) * torch.tanh(c), c
    if kind == "RNN":
        return torch.tanh(xw + h @ r.t() + rb), c
    xz, xr, xh = xw.split(hs, dim=1)
    rz, rr, rh = r.split(hs, dim=0)
    bz, br, bh = rb.split(hs)
    zt = torch.sigmoid(xz + h @ rz.t() + bz)
    rt = torch.sigmoid(xr + h @ rr.t() + br)
    if linear_before_reset:
        ht = torch.tanh(xh + rt * (h @ rh.t() + bh))
    else:
        ht = torch.tanh(xh + (rt * h) @ rh.t() + bh)
    return (1 - zt) * ht + zt * h, c


def recurrent(kind: str, ins: list, a: dict) -> list:
    """``LSTM``/``GRU``/``RNN`` node outputs ``Y``, ``Y_h`` (and ``Y_c``)."""
    x, w, r = ins[0], ins[1], ins[2]
    b = _given(ins, 3)
    direction = a.get("direction", "forward")
    lens = _given(ins, 4)
    if a.get("layout", 0) != 0:
        raise Unsupported(f"{kind}: layout 1")
    # Which samples step at each time (None: every sample at every step).
    live = None if lens is None or bool((lens >= x.shape[0]).all()) else \
        (torch.arange(x.shape[0]).view(-1, 1, 1) < lens.long().view(1, -1, 1)).to(x.dtype)
    if direction not in ("forward", "reverse", "bidirectional"):
        raise Unsupported(f"{kind}: direction {direction}")
    peep = _given(ins, 7) if kind == "LSTM" else None
    dirs = 2 if direction == "bidirectional" else 1
    acts = [str(f).lower() for f in a.get("activations") or []]
    if "clip" in a or acts and acts != DEFAULT_ACTIVATIONS[kind] * dirs:
        raise Unsupported(f"{kind}: clip or activations other than the defaults")
    hs, g = a["hidden_size"], GATES[kind]
    h0, c0 = _given(ins, 5), _given(ins, 6)
    batch = x.shape[1]
    ys, hn, cn = [], [], []
    for d in range(dirs):
        reverse = direction == "reverse" or d == 1
        h = h0[d] if h0 is not None else x.new_zeros(batch, hs)
        c = c0[d] if c0 is not None else x.new_zeros(batch, hs)
        wb, rb = (b[d][: g * hs], b[d][g * hs:]) if b is not None else (x.new_zeros(g * hs), x.new_zeros(g * hs))
        out = [None] * x.shape[0]
        steps = range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])
        for t in steps:
            h1, c1 = _step(kind, x[t] @ w[d].t() + wb, h, c, r[d], rb, hs, a.get("linear_before_reset", 0),
                           None if peep is None else peep[d])
            if live is None:
                h, c, out[t] = h1, c1, h1
            else:
                m = live[t]
                h, c, out[t] = m * h1 + (1 - m) * h, m * c1 + (1 - m) * c, m * h1
        ys.append(torch.stack(out))
        hn.append(h)
        cn.append(c)
    return [torch.stack(ys, 1), torch.stack(hn), torch.stack(cn)]  # Y: [seq, dirs, batch, hidden]
