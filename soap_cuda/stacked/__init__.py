"""Many models as one: M models of one architecture (each with its own feedback rule, seed,
B's, schedule, learning rate and optimizer settings) trained as one stacked network, every
layer of all the models one batched op (`fa_linear_stacked`, a grouped `fa_conv`), every
feedback sync one `feedback_sync_` call for the models due.

    net = soap_cuda.stacked.stack(models)          # the models are copied
    opt = soap_cuda.stacked.SGD(net.parameters(), lr=torch.tensor([...]), momentum=0.9)
    losses = soap_cuda.stacked.per_model_loss(net(x), y)   # (M,): x shared, or (M, N, ...)
    losses.sum().backward(); opt.step(); opt.zero_grad()
    models = soap_cuda.stacked.unstack(net)        # ordinary models again

In float64 each model's run equals the one it would have alone, to rounding.
"""
from .metrics import alignment, loss_and_accuracy
from .net import StackedNet, per_model_loss, register, stack, unstack
from .optim import SGD, Adam
from .soap import SOAP

__all__ = ["SGD", "SOAP", "Adam", "StackedNet", "alignment", "loss_and_accuracy",
           "per_model_loss", "register", "stack", "unstack"]
