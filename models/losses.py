"""Training loss."""
import torch


def charbonnier(pred: torch.Tensor, target: torch.Tensor, delta: float = 1e-3) -> torch.Tensor:
    """L_delta = mean sqrt((I_HR - I_SR)^2 + delta^2)  # eq. 13"""
    return torch.sqrt((pred - target) ** 2 + delta**2).mean()
