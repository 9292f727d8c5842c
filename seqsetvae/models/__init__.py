"""Models: set-attention blocks, SetVAE, SeqSetVAEPretrain and SeqSetVAE (finetune)."""
