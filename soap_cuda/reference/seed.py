"""The seed project's FALinear, as its write-up gives it: the oracle our tests hold everything to.

Kept deliberately close to the original (mm + expanded bias in forward; all three gradients in
backward, always), only made to run on current PyTorch and to take device/dtype.
"""
import torch
from torch import nn
from torch.autograd import Function
from torch.nn import init


class SeedFALinearFunction(Function):
    @staticmethod
    def forward(ctx, data_in, weight, bias, b_matrix):
        ctx.save_for_backward(data_in, weight, bias, b_matrix)
        output = data_in.mm(weight.t())
        # The write-up expands the bias "as data_in", which only runs when in == out.
        return output + bias.unsqueeze(0).expand_as(output)

    @staticmethod
    def backward(ctx, grad_out):
        data_in, weight, bias, b_matrix = ctx.saved_tensors
        return grad_out.mm(b_matrix), grad_out.t().mm(data_in), grad_out.sum(0), None


class SeedFALinear(nn.Module):
    def __init__(self, num_in, num_out, device=None, dtype=None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_out, num_in, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(num_out, device=device, dtype=dtype))
        b_matrix = torch.zeros(num_out, num_in, device=device, dtype=dtype)
        self.register_buffer("b_matrix", b_matrix)
        init.xavier_normal_(b_matrix)
        init.xavier_normal_(self.weight)
        init.uniform_(self.bias, 0, 0)

    def forward(self, data_in):
        return SeedFALinearFunction.apply(data_in, self.weight, self.bias, self.b_matrix)
