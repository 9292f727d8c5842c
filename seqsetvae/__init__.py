"""SeqSetVAE: sequence-of-sets VAE for irregular clinical time series, as a reproducible pipeline."""

# Keep equal to [project] version in pyproject.toml (tests/test_cli.py checks it): `seqsetvae --version`,
# the MEDS export's etl_version and the package metadata all report it.
__version__ = "0.1.0"
