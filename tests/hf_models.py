"""Random-init HF transformers models for parity tests (test-only)."""

import torch
import transformers


def random_hf_model(naflex: bool, vision: dict, text: dict, seed: int = 0):
    """A `SiglipModel` (or NaFlex `Siglip2Model`) with spread weights.

    The default init is near zero; weights are redrawn from N(0, 0.3) (and
    the logit scale/bias from U(-1, 1)) so every weight matters.
    """
    prefix = "Siglip2" if naflex else "Siglip"
    config = getattr(transformers, f"{prefix}Config")(
        vision_config=vision, text_config=text
    )
    torch.manual_seed(seed)
    model = getattr(transformers, f"{prefix}Model")(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in ("logit_scale", "logit_bias"):
                param.uniform_(-1.0, 1.0)
            else:
                param.normal_(0.0, 0.3)
    return model
