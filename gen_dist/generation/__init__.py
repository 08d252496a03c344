"""Using a trained generator: loading any checkpoint (loading.py), drawing images (sampling.py) and
writing them as PNG files and grids (images.py)."""
