"""Measuring recognition: LFW verification of the zoo, and (later) the identification protocol."""
