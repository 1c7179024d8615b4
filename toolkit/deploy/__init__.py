"""`opsctl deploy`: a Dockerfile and Kubernetes manifests for models behind `opsctl proxy`.

models (what to deploy: from a tune run or flags), manifests (a Deployment + Service per model on the
tune's renderer, toolkit/tune/launch.py, and the proxy's), dockerfile (the image), files (the folder).
"""
