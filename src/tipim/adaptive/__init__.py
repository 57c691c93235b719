"""Attackers who fight back: networks trained on tipim's own outputs to undo its masks.

``pairs``: the attacker's training data, protected and clean crops of people disjoint from every
evaluation set. ``purifier``: an image-to-image network that maps protected crops back to clean
ones. ``adapted``: a recogniser fine-tuned (or a student distilled) so protected faces embed near
their clean selves. ``train``: the Lightning command that trains either.
"""
