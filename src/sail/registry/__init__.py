"""The control plane: Istio API → model objects → xds codec → ADS server."""
