"""Operating the app outside Ray Serve itself: the local launcher (``launch``) and the KubeRay
manifests rendered from a Serve config (``kuberay``). Imports ``deployments/`` and ``router/``,
never ``training/``."""
