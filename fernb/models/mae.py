"""Masked autoencoder (MAE; He et al., CVPR 2022) around a timm ViT: SSFER's face-reconstruction pre-training
(Song et al., Sec. 3.2 and Fig. 2a).

timm has no MAE pre-training model (its PatchDropout drops tokens for speed, it does not reconstruct them), so this
file is ours. The encoder is the *same* timm `VisionTransformer` the classifier uses (`fernb.models.create`), so its
weights load into the classifier key for key.

Symbols (MAE / SSFER):
  p          patch size; an H x W image is a grid of L = (H/p)(W/p) patches, each p*p*C numbers (`patchify`)
  r          mask ratio (SSFER: 75 %; Fig. 3 compares 50 / 75 / 90 %); len_keep = int(L * (1 - r))
  noise      one uniform number per patch per sample; ids_shuffle = argsort(noise) (ascending: the first
             len_keep are kept), ids_restore = argsort(ids_shuffle) puts them back (`random_masking`)
  mask       (B, L), 1 = masked (removed), 0 = visible, in the original patch order
  encoder    sees only the visible patches (plus the class token): with r = 0.75 a quarter of the tokens, which is
             why MAE pre-training is cheap
  decoder    a light transformer: the encoded visible tokens, a shared learned mask token at every masked position,
             fixed 2-D sine-cosine positions, then a linear layer to p*p*C pixels per patch
  loss       mean squared error over the *masked* patches only, on normalized pixels (each target patch minus its
             mean, divided by its standard deviation: MAE's norm_pix_loss, which SSFER follows, Sec. 4.2)

Choices left open by SSFER and what we took: the decoder width / depth (MAE's ViT-B uses 512 wide, 8 deep; ours
scales with the encoder, default 1/2 the encoder width and 2 blocks), learned encoder positions (timm's ViT; MAE
uses fixed sine-cosine there too), and average pooling + fc_norm for the classifier (MAE's fine-tuning default
`--global_pool`; SSFER only says "MLP head"), `vit_classifier`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from timm.layers import build_sincos2d_pos_embed
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from ..paths import atomic_save

__all__ = ["patchify", "normalized_display", "unpatchify", "random_masking", "masked_patch_loss", "masked_patch_loss_per_image",
           "MaskedAutoencoder", "MAEOutput",
           "vit_classifier", "save_encoder", "load_encoder", "mae_for"]


def patchify(imgs: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, L, p*p*C), patches in row-major order, each patch's pixels as (row, col, channel)."""
    b, c, h, w = imgs.shape
    if h % p or w % p:
        raise ValueError(f"image {h}x{w} is not a whole number of {p}x{p} patches")
    gh, gw = h // p, w // p
    x = imgs.reshape(b, c, gh, p, gw, p)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(b, gh * gw, p * p * c)


def unpatchify(patches: torch.Tensor, p: int, channels: int, grid: tuple[int, int] | None = None) -> torch.Tensor:
    """Inverse of `patchify`: (B, L, p*p*C) -> (B, C, H, W); `grid` = (H/p, W/p), square by default."""
    b, n, _ = patches.shape
    gh, gw = grid or (int(round(n ** 0.5)),) * 2
    if gh * gw != n:
        raise ValueError(f"{n} patches do not form a {gh}x{gw} grid")
    x = patches.reshape(b, gh, gw, p, p, channels)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(b, channels, gh * p, gw * p)


def random_masking(x: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None):
    """MAE's per-sample random masking by shuffling.

    x: (B, L, D) patch tokens. Returns (x_visible (B, len_keep, D), mask (B, L) with 1 = masked, ids_restore (B, L)).
    len_keep = int(L * (1 - mask_ratio)) for every sample; which patches are kept differs per sample (the first
    len_keep of argsort(noise)). `noise` (B, L) may be given (tests, figures); else it is drawn from torch's
    global generator, so seeding makes the masks repeatable.
    """
    b, n, d = x.shape
    if not 0 <= mask_ratio < 1:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    len_keep = int(n * (1 - mask_ratio))
    if noise is None:
        noise = torch.rand(b, n, device=x.device)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    x_visible = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, d))
    mask = torch.ones(b, n, device=x.device)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return x_visible, mask, ids_restore


def masked_patch_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                      norm_pix: bool = True) -> torch.Tensor:
    """MAE's reconstruction loss: per-patch MSE, averaged over the masked patches only (mask = 1).

    pred, target: (B, L, p*p*C); norm_pix normalizes each target patch by its own mean and variance (eps 1e-6)."""
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    per_patch = ((pred.float() - target.float()) ** 2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum().clamp(min=1)


def masked_patch_loss_per_image(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                                norm_pix: bool = True) -> torch.Tensor:
    """`masked_patch_loss` for each image separately: (B,), the mean over that image's masked patches."""
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    per_patch = ((pred.float() - target.float()) ** 2).mean(dim=-1)
    return (per_patch * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


@dataclass
class MAEOutput:
    loss: torch.Tensor        # scalar, masked patches only
    pred: torch.Tensor        # (B, L, p*p*C), in the loss's target space (normalized pixels when norm_pix_loss)
    mask: torch.Tensor        # (B, L), 1 = masked


class MaskedAutoencoder(nn.Module):
    """MAE with a timm ViT encoder (class token, learned absolute positions; `fernb.models.create("vit_*")`)."""

    def __init__(self, encoder: VisionTransformer, decoder_dim: int | None = None, decoder_depth: int = 2,
                 decoder_heads: int | None = None, mask_ratio: float = 0.75, norm_pix_loss: bool = True):
        super().__init__()
        if not isinstance(encoder, VisionTransformer):
            raise TypeError(f"MAE needs a timm VisionTransformer encoder, got {type(encoder).__name__}")
        if encoder.cls_token is None or encoder.reg_token is not None or encoder.no_embed_class \
                or encoder.pos_embed is None or getattr(encoder, "dynamic_img_size", False):
            raise ValueError("MAE expects a plain ViT: one class token, no register tokens, absolute positions that "
                             "include the class token, a fixed image size")
        self.encoder = encoder
        self.patch_size = int(encoder.patch_embed.patch_size[0])
        self.grid = tuple(int(g) for g in encoder.patch_embed.grid_size)
        self.in_chans = int(encoder.patch_embed.proj.in_channels)
        self.num_patches = self.grid[0] * self.grid[1]
        self.mask_ratio = float(mask_ratio)
        self.norm_pix_loss = norm_pix_loss
        dim = encoder.embed_dim
        decoder_dim = decoder_dim or max(32, dim // 2)
        decoder_heads = decoder_heads or max(1, decoder_dim // 32)
        self.decoder_embed = nn.Linear(dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        pos = build_sincos2d_pos_embed(list(self.grid), decoder_dim)            # (L, Dd), fixed
        self.register_buffer("decoder_pos_embed", torch.cat([torch.zeros(1, decoder_dim), pos])[None],
                             persistent=False)
        self.decoder_blocks = nn.Sequential(*[Block(decoder_dim, decoder_heads, mlp_ratio=4.0, qkv_bias=True)
                                              for _ in range(decoder_depth)])
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, self.patch_size ** 2 * self.in_chans)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in (self.decoder_embed, self.decoder_pred):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)

    # ---- the three stages -------------------------------------------------------------------------------------------
    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None):
        """Embed patches, add positions, keep a random len_keep per sample, prepend the class token, encode."""
        enc = self.encoder
        x = enc.patch_embed(imgs)                                   # (B, L, D)
        prefix = enc.num_prefix_tokens
        x = x + enc.pos_embed[:, prefix:]
        x, mask, ids_restore = random_masking(x, mask_ratio, noise)
        cls = (enc.cls_token + enc.pos_embed[:, :prefix]).expand(x.shape[0], -1, -1)
        x = enc.pos_drop(torch.cat([cls, x], dim=1))
        x = enc.norm_pre(x)
        x = enc.blocks(x)
        return enc.norm(x), mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Mask tokens at the removed positions, unshuffle, add fixed positions, decode, predict p*p*C pixels."""
        x = self.decoder_embed(latent)
        b, n_vis, d = x.shape
        masks = self.mask_token.to(x.dtype).expand(b, self.num_patches + 1 - n_vis, -1)
        tokens = torch.cat([x[:, 1:], masks], dim=1)
        tokens = torch.gather(tokens, 1, ids_restore.unsqueeze(-1).expand(-1, -1, d))
        x = torch.cat([x[:, :1], tokens], dim=1) + self.decoder_pos_embed.to(x.dtype)
        x = self.decoder_norm(self.decoder_blocks(x))
        return self.decoder_pred(x)[:, 1:]

    def forward(self, imgs: torch.Tensor, mask_ratio: float | None = None,
                noise: torch.Tensor | None = None) -> MAEOutput:
        r = self.mask_ratio if mask_ratio is None else mask_ratio
        latent, mask, ids_restore = self.forward_encoder(imgs, r, noise)
        pred = self.forward_decoder(latent, ids_restore)
        loss = masked_patch_loss(pred, patchify(imgs, self.patch_size), mask, self.norm_pix_loss)
        return MAEOutput(loss, pred, mask)

    @torch.no_grad()
    def reconstruct(self, imgs: torch.Tensor, mask_ratio: float | None = None, noise: torch.Tensor | None = None):
        """For figures: (masked input, reconstruction with the visible patches pasted back, loss), images in the
        input's space. With norm_pix_loss the prediction is in normalized-patch units; it is mapped back with each
        masked patch's TRUE mean and standard deviation, as the MAE authors' visualization of such models does: the
        brightness and contrast of every masked patch are borrowed from the ground truth (at 90 % masking a coarse
        mosaic of the true face appears that the model never predicted), and only the structure inside each patch
        is the decoder's. Label such a figure as borrowing ground truth; `reconstruct_normalized` shows the
        decoder's own output."""
        out = self.forward(imgs, mask_ratio, noise)
        p, c = self.patch_size, self.in_chans
        target = patchify(imgs, p)
        pred = out.pred.float()
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            std = (target.var(dim=-1, keepdim=True) + 1.0e-6) ** 0.5
            pred = pred * std + mean
        m = out.mask.unsqueeze(-1)
        masked_input = unpatchify(target * (1 - m) + m * target.amin(), p, c, self.grid)
        pasted = unpatchify(target * (1 - m) + pred * m, p, c, self.grid)
        return masked_input, pasted, out.loss

    @torch.no_grad()
    def reconstruct_normalized(self, imgs: torch.Tensor, mask_ratio: float | None = None,
                               noise: torch.Tensor | None = None):
        """The decoder's own output, nothing borrowed: (target, prediction, per-image loss) as images in [0, 1],
        both in the loss's space (each patch normalized by its own mean and std, `normalized_display`). target
        shows every patch of the input so normalized; prediction shows the visible patches the same way and, at
        every masked position, what the decoder predicted. The loss is this figure's mean squared difference over
        the masked patches (before the display map). Needs norm_pix_loss (the loss space is then defined)."""
        if not self.norm_pix_loss:
            raise ValueError("reconstruct_normalized needs an MAE trained with norm_pix_loss=True")
        out = self.forward(imgs, mask_ratio, noise)
        p, c = self.patch_size, self.in_chans
        target = patchify(imgs, p).float()
        z = (target - target.mean(dim=-1, keepdim=True)) / (target.var(dim=-1, keepdim=True) + 1.0e-6) ** 0.5
        m = out.mask.unsqueeze(-1)
        shown = z * (1 - m) + out.pred.float() * m
        per_image = masked_patch_loss_per_image(out.pred, target, out.mask, True)
        return (unpatchify(normalized_display(z), p, c, self.grid),
                unpatchify(normalized_display(shown), p, c, self.grid), per_image)


def normalized_display(patches: torch.Tensor, spread: float = 2.5) -> torch.Tensor:
    """Map per-patch normalized pixels z (mean 0, std 1 within each patch) to [0, 1] for display:
    0.5 + z / (2 * spread), clipped; a fixed map, so predicted and true patches are drawn on the same scale."""
    return (0.5 + patches / (2 * spread)).clamp(0, 1)


def mae_for(encoder: VisionTransformer, **kwargs) -> MaskedAutoencoder:
    """`MaskedAutoencoder(encoder, **kwargs)`; the encoder should come from `models.create(name, 0, ...)`."""
    return MaskedAutoencoder(encoder, **kwargs)


def vit_classifier(name: str, num_classes: int, *, in_chans: int = 3, img_size: int | None = None,
                   encoder_checkpoint: str | Path | None = None, global_pool: str = "avg",
                   **vit_kwargs) -> VisionTransformer:
    """The fine-tuning model: the same ViT with a linear head on the mean of the patch tokens (+ fc_norm), MAE's
    fine-tuning default (global_pool="token" uses the class token instead). `encoder_checkpoint` loads MAE weights
    (`load_encoder`); without it the model starts from scratch. `vit_kwargs` go to timm (e.g. patch_size=8), and
    must match the encoder's."""
    from . import create

    model = create(name, num_classes, in_chans=in_chans, img_size=img_size, global_pool=global_pool, **vit_kwargs)
    if encoder_checkpoint is not None:
        load_encoder(model, encoder_checkpoint)
    return model


def save_encoder(mae: MaskedAutoencoder, path: str | Path) -> Path:
    """The encoder's weights only (no decoder), as a plain state_dict."""
    return atomic_save({k: v.detach().cpu() for k, v in mae.encoder.state_dict().items()}, path)


def load_encoder(model: VisionTransformer, path: str | Path) -> VisionTransformer:
    """Load an MAE encoder checkpoint into a ViT classifier. Every encoder weight must land; the only keys allowed
    to stay missing are the new head and fc_norm, and the only ones allowed to go unused the encoder's final norm
    (an average-pooling classifier replaces it by fc_norm, as MAE fine-tuning does)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MAE checkpoint {path} does not exist (fernb never downloads weights; pre-train "
                                "one with fernb.methods.ssfer.pretrain_mae)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    # a checkpoint written by `python -m fernb train --task mae` holds the (untrained) head of its classifier: the
    # fine-tuning head is new, whatever its number of classes
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(("head.", "fc_norm."))]
    unexpected = [k for k in result.unexpected_keys if not k.startswith("norm.")]
    if missing or unexpected:
        raise ValueError(f"{path} does not fit this ViT: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model
