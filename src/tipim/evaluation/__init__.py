"""Measuring recognition: LFW verification of the zoo, the identification protocol (Tables 3-4),
the attacker pipeline on photos, the photo benchmark and the self-check after writing."""
