"""Training with CME: per-token (dense) advantages (`advantages`, pure tensor math), the `DenseGRPOTrainer` on top of
TRL (`trainer`, which imports TRL's trainers: import it directly), and a trainable policy from the same sources as a
verifier (`policy`)."""
