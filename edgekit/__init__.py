"""edgekit: convert, verify, sign and deploy ML models to fleets of edge devices."""

__version__ = "0.1.0"
