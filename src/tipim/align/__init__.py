"""Face detection (MTCNN) and five-point alignment to the ArcFace template."""
