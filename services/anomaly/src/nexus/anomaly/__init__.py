"""nexus.anomaly: the anomaly detection service.

Batch detectors (Isolation Forest, One-Class SVM, LOF, an autoencoder and their ensemble) trained
and stored through the model registry, and streaming detection of metric points from NATS.
"""
