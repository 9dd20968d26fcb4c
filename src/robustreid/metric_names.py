"""The names of everything a run records per epoch, defined once.

The trainer writes these keys to ``metrics.jsonl`` and TensorBoard; :mod:`robustreid.viz.curves`
reads and draws them. Epoch 0 is the evaluation before training. A bottom module: it imports
nothing, so the trainer, the plots and the clustering diagnostics can all name the keys.
"""

from __future__ import annotations

#: Test ranking metrics, fractions in [0, 1].
RANKING_KEYS = ("mAP", "rank1", "rank5", "mINP")

#: Phases of an epoch, in the order they run; ``time_<phase>`` holds their seconds.
PHASES = ("extract", "cluster", "memory", "train", "eval", "diagnostics")
TIME_KEYS = tuple(f"time_{phase}" for phase in PHASES)

#: Keys of :func:`robustreid.clustering.quality.pseudo_label_quality`'s result, in display
#: order: agreement of the pseudo-labels with the true identities (only on data that carries
#: them; never used to train).
QUALITY_KEYS = ("pl_clusters", "pl_identities", "pl_outlier_fraction", "pl_precision",
                "pl_recall", "pl_fscore", "pl_ari", "pl_nmi")

#: With pseudo-label refinement (``refine.kind``): the quality keys also reported for the
#: clustering's labels before refinement, as ``pl_raw_<name>`` (``pl_precision`` ->
#: ``pl_raw_precision``).
RAW_QUALITY_OF = ("pl_precision", "pl_recall", "pl_fscore", "pl_ari")
RAW_QUALITY_KEYS = tuple(f"pl_raw_{key[3:]}" for key in RAW_QUALITY_OF)

#: What a refined epoch reports (see ``memory.refinement``): samples whose hard label changed,
#: the mean target weight left on the clustering's own label, clusters emptied and dropped.
REFINE_KEYS = ("refine_relabelled", "refine_own_weight", "refine_emptied")

#: What every trained epoch reports.
EPOCH_KEYS = ("lr", "clusters", "outliers", "loss")

#: Memory and update diagnostics against the true identities (only on data that carries
#: them; never used to train). Angles in degrees, fractions in [0, 1].
MEMORY_DIAGNOSTICS = {
    "mem_init_angle": "mean angle between each initial prototype and its cluster's majority "
                      "identity centre (the initialiser the run uses)",
    "mem_init_angle_mean": "the same for the plain mean initialisation (reference)",
    "mem_end_angle": "the same for the prototypes at the end of the epoch",
    "upd_mislabeled_fraction": "momentum updates made with a sample whose identity is not "
                               "its cluster's majority identity",
    "upd_batch_mislabeled_fraction": "batch samples whose identity is not their cluster's "
                                     "majority identity (the base rate)",
    "upd_count": "momentum updates in the epoch",
}
MEMORY_DIAGNOSTIC_KEYS = tuple(MEMORY_DIAGNOSTICS)

#: Statistics the CSA / HPS strategies report (see ``memory.strategies``).
METHOD_KEYS = ("saa_initial_loss", "saa_final_loss", "saa_seconds", "hps_accepted_fraction",
               "hps_fallback_fraction", "hps_dispersion", "joint_loss", "joint_peak_weight")

#: The label-free signal (``train.select_by`` other than ``map``; see
#: ``clustering.label_free``), the radius ``cluster.eps: auto`` chose (``eps``; also
#: ``eps_criterion``, a name, and ``eps_scores``, radius -> score) and the ``k1`` of
#: ``cluster.k1: auto`` (``k1``; also ``k1_criterion`` and ``k1_scores``, k1 -> score).
LABEL_FREE_KEYS = ("label_free_score", "lf_agreement", "lf_cross_camera",
                   "label_free_score_final", "eps", "k1")

#: Every numeric key a record may hold.
NUMBER_KEYS = (*EPOCH_KEYS, *RANKING_KEYS, *TIME_KEYS, *QUALITY_KEYS, *RAW_QUALITY_KEYS,
               *MEMORY_DIAGNOSTIC_KEYS, *METHOD_KEYS, *REFINE_KEYS,
               *LABEL_FREE_KEYS)
#: The keys that must be fractions in [0, 1].
FRACTION_KEYS = RANKING_KEYS
