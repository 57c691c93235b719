"""TIP-IM: targeted identity-protection masks for face photos."""

__version__ = "0.1.0"
