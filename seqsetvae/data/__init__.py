"""Data layer: sources (synthetic, PhysioNet 2012, MEDS) -> canonical MEDS tables -> packed set tensors."""
