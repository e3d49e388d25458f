"""Cluster-based selection: k-means over document embeddings, representatives nearest each centroid."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from engine.sampling.allocation import spread


def pca_2d(embeddings: np.ndarray) -> np.ndarray:
    """The first two principal components (for the selection figure); zeros where there are fewer."""
    centered = embeddings - embeddings.mean(axis=0, keepdims=True)
    if len(centered) < 2:
        return np.zeros((len(centered), 2))
    _, _, vt = np.linalg.svd(centered, full_matrices=False)
    projected = centered @ vt[:2].T
    return np.pad(projected, ((0, 0), (0, 2 - projected.shape[1])))


def cluster_select(embeddings: np.ndarray, k: int, nsamples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(chosen rows of ``embeddings``, cluster label of every row).

    k-means (scikit-learn, k-means++ init, seeded); each cluster gets samples in proportion to its
    size (exactly one each when k = nsamples) and gives its members nearest the centroid."""
    from sklearn.cluster import KMeans

    k = min(k, len(embeddings))
    with warnings.catch_warnings():  # duplicate documents can leave fewer distinct points than k
        warnings.simplefilter("ignore")
        model = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(embeddings)
    labels = model.labels_
    distance = np.linalg.norm(embeddings - model.cluster_centers_[labels], axis=1)
    sizes = np.bincount(labels, minlength=k)
    quota = spread(nsamples, sizes, sizes)
    chosen = []
    for cluster in range(k):
        members = np.flatnonzero(labels == cluster)
        chosen.extend(members[np.argsort(distance[members], kind="stable")][: quota[cluster]].tolist())
    return np.array(chosen, dtype=np.int64), labels


def selection_frame(documents: np.ndarray, embeddings: np.ndarray, labels: np.ndarray, chosen: np.ndarray) -> pd.DataFrame:
    """One row per candidate document: its 2-D projection, cluster and whether it was selected."""
    projected = pca_2d(embeddings)
    selected = np.zeros(len(documents), dtype=bool)
    selected[chosen] = True
    return pd.DataFrame({"row_id": documents, "pc1": projected[:, 0], "pc2": projected[:, 1],
                         "cluster": labels, "selected": selected})
