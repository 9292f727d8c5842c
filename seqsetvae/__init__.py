"""SeqSetVAE: sequence-of-sets VAE for irregular clinical time series, as a reproducible pipeline."""

__version__ = "0.1.0"
