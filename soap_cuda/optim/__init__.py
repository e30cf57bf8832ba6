"""Optimizers built on the perturbation passes: SOAP (Newton step along the FA direction)."""
from .soap import SOAP

__all__ = ["SOAP"]
