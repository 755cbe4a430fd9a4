"""ConvFLU against equations (1)-(4) of the paper, written out with F.conv2d on the module's weights."""

import torch
import torch.nn.functional as F

from fersnet_ray.model.layers import ConvFLU


def test_matches_equations_1_to_4() -> None:
    c = 6
    flu = ConvFLU(c)
    for p in flu.parameters():  # larger weights than the default init, so every term matters
        torch.nn.init.normal_(p, std=0.5)
    f_x, f_y = torch.randn(2, c, 5, 7), torch.randn(2, c, 5, 7)

    out, gates = flu(f_x, f_y)

    cat = torch.cat([f_x, f_y], dim=1)
    r = torch.sigmoid(F.conv2d(cat, flu.w_r.weight))  # (1)
    f_tilde = torch.tanh(F.conv2d(r * f_y, flu.w.weight) + F.conv2d(f_x, flu.u.weight))  # (2)
    z = torch.sigmoid(F.conv2d(cat, flu.w_z.weight))  # (3)
    expected = (1 - z) * f_x + z * f_tilde  # (4)

    torch.testing.assert_close(gates.r, r)
    torch.testing.assert_close(gates.z, z)
    torch.testing.assert_close(out, expected)


def test_kernels_are_1x1_without_bias() -> None:
    flu = ConvFLU(4)
    for conv in (flu.w_r, flu.w_z, flu.w, flu.u):
        assert conv.kernel_size == (1, 1) and conv.bias is None
    assert flu.w_r.in_channels == flu.w_z.in_channels == 8


def test_memory_gate_direction() -> None:
    # Eq. (4) and the paper's reading of Fig. 3: z near 0 keeps the branch's own features F_x, z near 1 takes
    # the mixed F~. (The appendix code has it the other way round.)
    flu = ConvFLU(3)
    f_x, f_y = torch.rand(1, 3, 4, 4) + 0.1, torch.rand(1, 3, 4, 4) + 0.1  # positive, so the sign of W_z decides
    with torch.no_grad():
        flu.w_z.weight.fill_(-50.0)
        closed, gates = flu(f_x, f_y)
        assert gates.z.max() < 1e-6
        torch.testing.assert_close(closed, f_x)
        flu.w_z.weight.fill_(50.0)
        opened, gates = flu(f_x, f_y)
        assert gates.z.min() > 1 - 1e-6
        torch.testing.assert_close(opened, torch.tanh(flu.w(gates.r * f_y) + flu.u(f_x)))


def test_gate_bias_starts_the_branches_apart() -> None:
    # flu_gate_bias (not in the paper): W_z alone gets a bias, so z starts near sigmoid(bias) and the
    # block's output is almost its own features; the paper's bias-free kernels start at z ≈ 0.5.
    from fersnet_ray.model import create_model
    from fersnet_ray.model.config import ModelConfig

    torch.manual_seed(0)
    flu = ConvFLU(4, gate_bias=-4.0)
    assert flu.w_z.bias is not None and flu.w_r.bias is None and flu.w.bias is None and flu.u.bias is None
    f_x, f_y = torch.randn(2, 4, 5, 5), torch.randn(2, 4, 5, 5)
    out, gates = flu(f_x, f_y)
    assert 0.005 < gates.z.mean() < 0.05
    assert (out - f_x).abs().mean() < 0.1 * f_x.abs().mean()

    x = torch.randn(2, 1, 32, 32)
    for bias, low, high in ((None, 0.4, 0.6), (-4.0, 0.005, 0.05)):
        model = create_model(ModelConfig.tiny(flu_gate_bias=bias)).eval()
        with torch.no_grad():
            gates = model.encode(x, return_gates=True)[2]
        for block in gates:
            assert low < float(block.fer.z.mean()) < high and low < float(block.fes.z.mean()) < high
